"""Methods: one module per RoB objective, built from `cfg.method` by `build_method`."""

from __future__ import annotations

from rob_ray.methods.base import Method, StepOutput, Views

__all__ = ["Method", "StepOutput", "Views", "build_method"]


def build_method(method_cfg, teacher, student) -> Method:
    """The method object for `cfg.method` (the only place that maps method config to objects)."""
    if method_cfg.name == "dino":
        from rob_ray.losses import build_loss
        from rob_ray.methods.dino import DinoMethod

        return DinoMethod(teacher, student, build_loss(method_cfg, teacher.num_prototypes))
    if method_cfg.name == "feature":
        from rob_ray.losses.feature import FeatureLoss
        from rob_ray.methods.feature import FeatureMethod

        return FeatureMethod(teacher, student, FeatureLoss(pairing=method_cfg.pairing))
    raise ValueError(f"unknown method '{method_cfg.name}'")
