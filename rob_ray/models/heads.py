"""SSL projection heads.

`DINOHead` follows DINO (Caron et al. 2021, Sec. 3 / vision_transformer.py DINOHead): a 3-layer
MLP (GELU, optional BN) to a bottleneck, L2 normalisation, then a weight-normalised linear layer
without bias whose rows are the prototypes. Its `mlp.{0,2,4}` / `last_layer` keys match DINO's
checkpoints, so official heads load with a simple rename.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """Args:
        in_dim: backbone feature width.
        out_dim: number of prototypes K.
        hidden_dim, bottleneck_dim, num_layers: MLP shape (DINO: 2048, 256, 3).
        use_bn: BatchNorm after each hidden Linear (shifts the mlp indices, as in DINO).
        norm_last_layer: fix the weight-norm gain to 1 so prototypes stay unit length (DINO default).

    Forward: (N, in_dim) -> (N, out_dim) cosine scores between the bottleneck and the prototypes.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        if num_layers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(num_layers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad_(False)
        self.in_dim, self.out_dim = in_dim, out_dim

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        # eps keeps a zero bottleneck (e.g. a dead ReLU batch) from producing NaN.
        x = F.normalize(x, dim=-1, p=2, eps=1e-6)
        return self.last_layer(x)
