"""Tiny teacher checkpoints in the official layouts, written by tests (never downloaded)."""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch


def write_swav_checkpoint(path: Path, k: int = 32, dim: int = 16, hidden: int = 64, seed: int = 0) -> Path:
    """SwAV layout (module. prefix, projection_head.{0,1,3}, prototypes.weight) on a one-block-per-stage RN50."""
    from rob_ray.models.teachers.swav import SwavResNet

    torch.manual_seed(seed)
    trunk = SwavResNet((1, 1, 1, 1), 1)
    state = {f"module.{k_}": v for k_, v in trunk.state_dict().items()}
    head = {"projection_head.0.weight": torch.randn(hidden, 2048) * 0.02, "projection_head.0.bias": torch.zeros(hidden),
            "projection_head.1.weight": torch.ones(hidden), "projection_head.1.bias": torch.zeros(hidden),
            "projection_head.1.running_mean": torch.zeros(hidden), "projection_head.1.running_var": torch.ones(hidden),
            "projection_head.1.num_batches_tracked": torch.tensor(0),
            "projection_head.3.weight": torch.randn(dim, hidden) * 0.1, "projection_head.3.bias": torch.zeros(dim),
            "prototypes.weight": torch.randn(k, dim)}
    state.update({f"module.{k_}": v for k_, v in head.items()})
    torch.save(state, path)
    return path


def write_dino_checkpoint(path: Path, arch: str = "test_vit", k: int = 32, seed: int = 0) -> Path:
    """DINO full-checkpoint layout: {'teacher': backbone.* + head.mlp.* + head.last_layer.weight_g/_v, 'args'}."""
    torch.manual_seed(seed)
    backbone = timm.create_model(arch, num_classes=0)
    width = backbone.num_features
    state = {f"backbone.{n}": v for n, v in backbone.state_dict().items()}
    dims = [(width, 64), (64, 64), (64, 16)]
    for i, (a, b) in zip((0, 2, 4), dims, strict=True):
        state[f"head.mlp.{i}.weight"] = torch.randn(b, a) * 0.05
        state[f"head.mlp.{i}.bias"] = torch.zeros(b)
    state["head.last_layer.weight_g"] = torch.ones(k, 1)
    state["head.last_layer.weight_v"] = torch.randn(k, 16)
    torch.save({"teacher": state, "student": {}, "epoch": 1, "args": argparse.Namespace(arch=arch)}, path)
    return path


def write_timm_classifier(path: Path, arch: str = "test_resnet", num_classes: int = 10, seed: int = 0) -> Path:
    """A supervised classifier's state_dict (the KD teacher), loaded through teacher.kind=timm."""
    torch.manual_seed(seed)
    torch.save(timm.create_model(arch, num_classes=num_classes).state_dict(), path)
    return path
