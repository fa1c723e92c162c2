"""Losses: plain torch, no Ray. Each takes student/teacher scores and returns a dict with `loss`."""

from rob_ray.losses.dino import DinoLoss
from rob_ray.losses.feature import FeatureLoss
from rob_ray.losses.ibot import IbotLoss
from rob_ray.losses.kd import KDLoss
from rob_ray.losses.msn import MsnLoss, msn_sinkhorn
from rob_ray.losses.pairing import PAIRINGS, view_pairs
from rob_ray.losses.sinkhorn import sinkhorn_knopp
from rob_ray.losses.swav import SwavLoss

__all__ = ["PAIRINGS", "DinoLoss", "FeatureLoss", "IbotLoss", "KDLoss", "MsnLoss", "SwavLoss", "build_loss", "msn_sinkhorn",
           "sinkhorn_knopp", "view_pairs"]


def build_loss(method, out_dim: int):
    """The loss module for `cfg.method` (the only place that reads the method config)."""
    if method.name == "dino":
        return DinoLoss(out_dim, teacher_temp=method.teacher_temp, student_temp=method.student_temp,
                        centering=method.centering, center_momentum=method.center_momentum, pairing=method.pairing,
                        teacher_norm=method.teacher_norm, sinkhorn_iterations=method.sinkhorn_iterations)
    if method.name == "ibot":
        return IbotLoss(teacher_temp=method.teacher_temp, teacher_patch_temp=method.teacher_patch_temp,
                        student_temp=method.student_temp, lambda1=method.lambda1, lambda2=method.lambda2,
                        pairing=method.pairing)
    if method.name == "msn":
        return MsnLoss(teacher_temp=method.teacher_temp, student_temp=method.student_temp, pairing=method.pairing,
                       sinkhorn=method.sinkhorn, sinkhorn_iters=method.sinkhorn_iters, me_max=method.me_max,
                       me_max_weight=method.me_max_weight)
    raise ValueError(f"unknown method '{method.name}'")
