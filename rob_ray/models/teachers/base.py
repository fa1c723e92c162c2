"""The teacher contract: a frozen backbone + its SSL head, with its own input normalisation."""

from __future__ import annotations

import torch
from torch import nn

from rob_ray.errors import TeacherLoadError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Teacher", "TeacherLoadError"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Teacher(nn.Module):
    """Frozen at construction and pinned to eval mode (BN statistics and dropout never move).

    Args:
        backbone: (N, 3, S, S) -> (N, D) embedding.
        head: (N, D) -> (N, K) prototype scores (the SSL head; for a supervised classifier, its logits).
        mean, std: the normalisation the backbone was trained with (RGB in [0, 1]).
        name: a label for logs and tables.
        patch_size: ViT patch size (crop sizes must be multiples of it), None for CNNs.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, num_prototypes: int, embed_dim: int,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 name: str = "teacher", patch_size: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_prototypes = int(num_prototypes)
        self.embed_dim = int(embed_dim)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name
        self.patch_size = patch_size
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised images -> (N, D) embedding (for k-NN)."""
        return self.backbone(x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised images -> (N, K) prototype scores, before any temperature."""
        return self.head(self.backbone(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
