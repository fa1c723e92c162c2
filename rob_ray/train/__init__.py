"""Training: the loop (Ray-free), its contexts, schedules, checkpoints, metrics, and the Ray launcher."""

from rob_ray.train.checkpoint import CheckpointError, LocalCheckpoints, load_state, save_state
from rob_ray.train.context import LocalContext, TrainContext
from rob_ray.train.schedules import cosine_schedule

__all__ = ["CheckpointError", "LocalCheckpoints", "LocalContext", "TrainContext", "cosine_schedule", "load_state",
           "save_state"]
