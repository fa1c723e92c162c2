"""SwAV projection head + prototypes (Caron et al. 2020; src/resnet50.py `projection_head`, `prototypes`).

projection_head: Linear(in, hidden) -> BatchNorm1d -> ReLU -> Linear(hidden, D) (a single Linear when
hidden is 0), then L2 normalisation; prototypes: K x D rows. Scores = normalize(proj(x)) @ prototypes^T.
Key names (`projection_head.{0,1,3}`, `prototypes.weight`) match the official checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SwavHead"]


class SwavHead(nn.Module):
    """Args:
        in_dim: backbone feature width.
        out_dim: embedding width D (SwAV 128).
        hidden_dim: MLP width (SwAV RN50 2048, w2 4096, w4 8192); 0 = one Linear.
        num_prototypes: K trainable prototypes (the student's own), or
        frozen_prototypes: a (K, D) tensor kept as a frozen buffer (the teacher's), L2-normalised.

    Forward: (N, in_dim) -> (N, K) cosine scores. `project`: (N, in_dim) -> (N, D) unit embeddings.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int = 2048, num_prototypes: int | None = None,
                 frozen_prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        if (num_prototypes is None) == (frozen_prototypes is None):
            raise ValueError("give exactly one of num_prototypes (own, trainable) or frozen_prototypes")
        if hidden_dim:
            self.projection_head: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, out_dim))
        else:
            self.projection_head = nn.Linear(in_dim, out_dim)
        if frozen_prototypes is not None:
            if frozen_prototypes.ndim != 2 or frozen_prototypes.shape[1] != out_dim:
                raise ValueError(f"frozen prototypes must be (K, {out_dim}), got {tuple(frozen_prototypes.shape)}")
            self.prototypes = None
            self.register_buffer("frozen_prototypes", F.normalize(frozen_prototypes.detach().float(), dim=1))
        else:
            self.prototypes = nn.Linear(out_dim, num_prototypes, bias=False)
            self.normalize_prototypes_()
        self.in_dim, self.out_dim = in_dim, out_dim

    @property
    def num_prototypes(self) -> int:
        return int((self.frozen_prototypes if self.prototypes is None else self.prototypes.weight).shape[0])

    @torch.no_grad()
    def normalize_prototypes_(self) -> None:
        """SwAV re-normalises its trainable prototypes in place before every step (main_swav.py)."""
        if self.prototypes is not None:
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        # eps keeps an all-zero projection from producing NaN.
        return F.normalize(self.projection_head(x), dim=1, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.project(x)
        if self.prototypes is None:
            return z @ self.frozen_prototypes.to(z.dtype).t()
        return self.prototypes(z)
