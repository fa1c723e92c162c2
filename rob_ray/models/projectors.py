"""MSN projector (Assran et al. 2022, src/msn_train.py `init_model`: `encoder.fc`).

fc1 -> BN -> GELU -> fc2 -> BN -> GELU -> fc3 (hidden 2048, output 256 in every released model).
Parameter names `fc1/bn1/fc2/bn2/fc3` match the `fc.*` keys of MSN checkpoints, so a teacher's
projector loads with the `fc.` prefix stripped; a student gets a fresh one.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MSNProjector"]


class MSNProjector(nn.Module):
    """Args:
        in_dim: backbone width D.
        hidden_dim: MSN 2048.
        out_dim: embedding width (must equal the prototypes' width; MSN 256).
        use_bn: BatchNorm1d after fc1 and fc2 (MSN configs: true).

    Forward: (N, in_dim) -> (N, out_dim), not normalised (MSN normalises inside its soft nearest
    neighbour classifier).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 256, use_bn: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim) if use_bn else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.bn2 = nn.BatchNorm1d(hidden_dim) if use_bn else nn.Identity()
        self.fc3 = nn.Linear(hidden_dim, out_dim)
        self.act = nn.GELU()
        for m in (self.fc1, self.fc2, self.fc3):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.fc1(x)))
        x = self.act(self.bn2(self.fc2(x)))
        return self.fc3(x)
