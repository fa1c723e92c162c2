"""The SSL-from-scratch teacher: an exponential moving average of the student (DINO, Caron et al. 2021,
Sec. 3.1 "Teacher network" and main_dino.py): same architecture, no gradients, updated after every
optimiser step with theta_t <- m theta_t + (1 - m) theta_s, m following a cosine from 0.996 to 1.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rob_ray.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["EmaTeacher"]


class EmaTeacher(nn.Module):
    """A frozen-gradient copy of `student` exposing the teacher contract (mean, std, num_prototypes, embed).

    As in DINO it stays in the training mode it was built in (BatchNorm uses batch statistics and
    keeps its own running statistics); only parameters follow the student, buffers are its own.
    Forward: (N, 3, S, S) -> (N, K) scores before temperature.
    """

    def __init__(self, student: nn.Module, num_prototypes: int, mean: tuple[float, float, float] = IMAGENET_MEAN,
                 std: tuple[float, float, float] = IMAGENET_STD) -> None:
        super().__init__()
        self.net = copy.deepcopy(student)
        self.net.requires_grad_(False)
        self.num_prototypes = int(num_prototypes)
        self.mean, self.std = tuple(mean), tuple(std)
        self.name = "ema(student)"
        self.embed_dim = int(getattr(student.head, "in_dim", 0)) or None
        patch = getattr(getattr(student.backbone, "patch_embed", None), "patch_size", None)
        self.patch_size = (int(patch[0]) if isinstance(patch, tuple | list) else int(patch)) if patch else None

    # The teacher contract's parts (the pre-launch checks read them as on any pretrained teacher).
    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    @property
    def head(self) -> nn.Module:
        return self.net.head

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net([x])

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s over parameters (DINO's update; buffers untouched)."""
        t_params = list(self.net.parameters())
        s_params = list(student.parameters())
        if len(t_params) != len(s_params):
            raise RuntimeError("EMA teacher and student have different parameter lists")
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1 - momentum)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
