"""Rebuild a timm VisionTransformer from an official iBOT / MSN / DINO ViT state_dict.

Their ViTs (DeiT-style, LayerNorm eps 1e-6, qkv bias, class token with a position) use the same
parameter names as timm's VisionTransformer: cls_token, pos_embed, patch_embed.proj.*,
blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm.*. So the weights load
unchanged; only the shape (width, depth, patch, grid) has to be read from the tensors. The number of
heads is not stored anywhere: it follows the standard sizes (or `teacher.arch` names the model).
"""

from __future__ import annotations

import re

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from rob_ray.models.teachers.base import TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import load_fitting
from rob_ray.models.teachers.timm_teacher import create_timm_backbone

__all__ = ["HEADS_BY_WIDTH", "load_vit_backbone"]

# ViT-Ti/S/B/L/H (DeiT / iBOT / MSN model factories).
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def _infer_vit(state: dict[str, torch.Tensor], source: str) -> nn.Module:
    try:
        width = int(state["cls_token"].shape[-1])
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
        hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    except (KeyError, ValueError):
        raise TeacherLoadError(f"{source} is not a ViT state_dict (no cls_token / patch_embed / blocks keys)") from None
    heads = HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise TeacherLoadError(
            f"{source}: ViT width {width} is not a standard size, so its head count is unknown; set teacher.arch "
            "to the timm model name"
        )
    return VisionTransformer(img_size=grid * patch, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                             mlp_ratio=hidden / width, qkv_bias="blocks.0.attn.qkv.bias" in state, num_classes=0,
                             dynamic_img_size=True)


def load_vit_backbone(state: dict[str, torch.Tensor], arch: str | None, source: str) -> nn.Module:
    """A timm ViT (num_classes=0, dynamic image size) holding exactly `state`'s weights."""
    backbone = create_timm_backbone(arch, num_classes=0) if arch else _infer_vit(state, source)
    missing, unexpected = load_fitting(backbone, state, source=source, arch=arch or "ViT (inferred from the file)")
    if missing or unexpected:
        raise TeacherLoadError(
            f"{source} does not fit the ViT {arch or '(inferred)'} ({len(missing)} missing keys e.g. {missing[:1]}, "
            f"{len(unexpected)} unexpected e.g. {unexpected[:1]}); set teacher.arch to the right timm model"
        )
    return backbone
