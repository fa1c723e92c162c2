"""rob_ray: Replace one Branch (RoB) self-supervised distillation on Ray.

Pipeline: data (sources, multi-crop) -> models (frozen teacher, student + head) -> losses ->
train (loop, checkpoints, Ray launcher) -> eval (k-NN). Ray is imported only at the edges.
"""

__version__ = "0.1.0"
