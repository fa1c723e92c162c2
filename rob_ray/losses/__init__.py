"""Losses: plain torch, no Ray. Each takes student/teacher scores plus `num_teacher_views` and `num_global`
(keyword, required: the convention in `rob_ray.losses.pairing`) and returns a dict with `loss`. Which loss
a method uses, built from which config, is its registry entry's business (`rob_ray.methods`)."""

from rob_ray.losses.dino import DinoLoss
from rob_ray.losses.feature import FeatureLoss
from rob_ray.losses.ibot import IbotLoss
from rob_ray.losses.kd import KDLoss
from rob_ray.losses.msn import MsnLoss, msn_sinkhorn
from rob_ray.losses.pairing import PAIRINGS, batch_and_views, view_pairs
from rob_ray.losses.sinkhorn import sinkhorn_knopp
from rob_ray.losses.swav import SwavLoss

__all__ = ["PAIRINGS", "DinoLoss", "FeatureLoss", "IbotLoss", "KDLoss", "MsnLoss", "SwavLoss", "batch_and_views", "msn_sinkhorn",
           "sinkhorn_knopp", "view_pairs"]

