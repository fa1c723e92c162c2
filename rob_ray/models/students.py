"""Students: any timm backbone (num_classes=0) + a fresh DINO-style projector."""

from __future__ import annotations

from typing import TYPE_CHECKING

import timm
import torch
from torch import nn

from rob_ray.errors import StudentBuildError
from rob_ray.models.heads import DINOHead

if TYPE_CHECKING:
    from rob_ray.config import StudentConfig

__all__ = ["Student", "StudentBuildError", "build_backbone", "build_student", "feature_width"]


def feature_width(backbone: nn.Module, feature: str) -> int:
    """Width of the embedding the head reads.

    timm's `num_features` is the width *before* any conv head; with num_classes=0 the model
    returns `head_hidden_size` features (MobileNetV3-L: 960 vs 1280). Pick by what we call.
    """
    if feature == "pooled":
        return int(backbone.num_features)
    return int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)


class Student(nn.Module):
    """Backbone + projector. `forward(crops)` takes a list of (N, 3, S, S) tensors (one per
    resolution group) and returns the concatenated (sum N, K) head outputs, one backbone call
    per resolution as in DINO's MultiCropWrapper. Keyword arguments (`global_mask`, `global_keep`,
    `return_patches`) corrupt the first (global) group of a ViT: see `rob_ray.models.vit_tokens`."""

    def __init__(self, backbone: nn.Module, head: nn.Module, feature: str = "pre_logits") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature = feature

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, D) features the head reads (and k-NN evaluates)."""
        if self.feature == "pooled":
            feats = self.backbone.forward_features(x)
            if feats.ndim == 4:  # CNN feature map: average-pool before any conv head
                return feats.mean(dim=(2, 3))
            return self.backbone.forward_head(feats, pre_logits=True)  # token models: their own pooling
        return self.backbone(x)

    def forward(self, crops: list[torch.Tensor], **corruption):
        if corruption:  # iBOT masks / MSN token dropping of the global views (ViT only)
            from rob_ray.models.vit_tokens import forward_token_views

            return forward_token_views(self, crops, **corruption)
        return self.head(torch.cat([self.embed(c) for c in crops]))


def build_backbone(cfg: StudentConfig) -> nn.Module:
    """The student's timm backbone (num_classes=0). Raises StudentBuildError for an unknown name."""
    try:
        kwargs = {"num_classes": 0, "pretrained": cfg.pretrained}
        if cfg.drop_path_rate:
            kwargs["drop_path_rate"] = cfg.drop_path_rate
        if "vit" in cfg.arch or "deit" in cfg.arch:
            # Multi-crop feeds 96 px locals to a ViT trained at 224: interpolate position embeddings.
            kwargs["dynamic_img_size"] = True
        return timm.create_model(cfg.arch, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            close = timm.list_models(f"*{cfg.arch.split('_')[0]}*")[:8]
            raise StudentBuildError(
                f"student.arch '{cfg.arch}' is not a timm model; similar names: {', '.join(close) or 'none'}"
            ) from None
        raise


def build_student(cfg: StudentConfig, out_dim: int) -> Student:
    """The timm backbone + a DINO head with `out_dim` prototypes (the teacher's count)."""
    backbone = build_backbone(cfg)
    h = cfg.head
    head = DINOHead(feature_width(backbone, cfg.feature), h.out_dim or out_dim, hidden_dim=h.hidden_dim,
                    bottleneck_dim=h.bottleneck_dim, num_layers=h.num_layers, use_bn=h.use_bn,
                    norm_last_layer=h.norm_last_layer)
    return Student(backbone, head, cfg.feature)
