"""Losses: plain torch, no Ray. Each takes student/teacher scores and returns a dict with `loss`."""

from rob_ray.losses.dino import DinoLoss
from rob_ray.losses.feature import FeatureLoss
from rob_ray.losses.kd import KDLoss
from rob_ray.losses.pairing import PAIRINGS, view_pairs
from rob_ray.losses.sinkhorn import sinkhorn_knopp
from rob_ray.losses.swav import SwavLoss

__all__ = ["PAIRINGS", "DinoLoss", "FeatureLoss", "KDLoss", "SwavLoss", "build_loss", "sinkhorn_knopp", "view_pairs"]


def build_loss(method, out_dim: int):
    """The loss module for `cfg.method` (the only place that reads the method config)."""
    if method.name == "dino":
        return DinoLoss(out_dim, teacher_temp=method.teacher_temp, student_temp=method.student_temp,
                        centering=method.centering, center_momentum=method.center_momentum, pairing=method.pairing)
    raise ValueError(f"unknown method '{method.name}'")
