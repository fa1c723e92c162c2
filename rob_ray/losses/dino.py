"""RoB-DINO loss (Duval et al. 2023, Sec. 3; DINO, Caron et al. 2021, Eq. 1-2).

CE(P_t, P_s) = -sum_k softmax((t - c) / tau_t)_k * log_softmax(s / tau_s)_k, averaged over the
batch and over view pairs. With a frozen teacher there is nothing to collapse, so RoB uses
no centering by default (`centering="ema"` restores DINO's running centre).

`teacher_norm="sinkhorn"` replaces the teacher softmax by Sinkhorn-Knopp codes with epsilon = tau_t
(SwAV's equipartition, as DINOv2's `sinkhorn_knopp_teacher`): over the batch (all workers' rows when a
process group runs) every prototype gets an equal share of the target mass. Fitted prototypes are
unevenly used; this keeps rarely-hit ones in the targets.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rob_ray.losses.pairing import batch_and_views, view_pairs
from rob_ray.losses.sinkhorn import sinkhorn_knopp

__all__ = ["DinoLoss"]


class DinoLoss(nn.Module):
    """Args:
        out_dim: number of prototypes K (size of the centre buffer).
        teacher_temp, student_temp: tau_t (RoB 0.07), tau_s (0.1).
        centering: "none" (RoB) or "ema" (DINO).
        center_momentum: EMA momentum of the centre (DINO 0.9).
        pairing: "same_view" (RoB) or "swapped" (DINO).
        teacher_norm: "softmax" or "sinkhorn" (balanced codes, epsilon = tau_t; no centering with it).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).

    Forward:
        student_logits: (V * B, K), views stacked view-major (view 0's B rows first).
        teacher_logits: (G * B, K), the teacher's scores for global views 0..G-1.
        num_teacher_views: G (keyword, required); num_global: how many of the student's V views are
            global crops (keyword, required) - the convention of `rob_ray.losses.pairing`.
        teacher_temp: overrides tau_t for this call (temperature schedules live in the caller).
    Returns a dict: `loss` (scalar), `teacher_probs` (G * B, K), `student_log_probs` (V * B, K).
    """

    def __init__(self, out_dim: int, teacher_temp: float = 0.07, student_temp: float = 0.1,
                 centering: str = "none", center_momentum: float = 0.9, pairing: str = "same_view",
                 teacher_norm: str = "softmax", sinkhorn_iterations: int = 3) -> None:
        super().__init__()
        if centering not in ("none", "ema"):
            raise ValueError(f"centering must be 'none' or 'ema', got '{centering}'")
        if teacher_norm not in ("softmax", "sinkhorn"):
            raise ValueError(f"teacher_norm must be 'softmax' or 'sinkhorn', got '{teacher_norm}'")
        if teacher_norm == "sinkhorn" and centering != "none":
            raise ValueError("teacher_norm='sinkhorn' balances the targets itself; use centering='none'")
        self.teacher_norm, self.sinkhorn_iterations = teacher_norm, sinkhorn_iterations
        self.teacher_temp, self.student_temp = teacher_temp, student_temp
        self.centering, self.center_momentum, self.pairing = centering, center_momentum, pairing
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, num_teacher_views: int,
                num_global: int, teacher_temp: float | None = None) -> dict[str, torch.Tensor]:
        tau_t = self.teacher_temp if teacher_temp is None else teacher_temp
        g = num_teacher_views
        _, v = batch_and_views(teacher_logits.shape[0], student_logits.shape[0], g, "logits")
        if student_logits.shape[1] != teacher_logits.shape[1]:
            raise ValueError(
                f"student head has {student_logits.shape[1]} outputs but the teacher has {teacher_logits.shape[1]} prototypes"
            )
        teacher = teacher_logits.float().detach()
        if self.centering == "ema":
            teacher = teacher - self.center
        if self.teacher_norm == "sinkhorn":
            t_probs = sinkhorn_knopp(teacher, epsilon=tau_t, iterations=self.sinkhorn_iterations)
        else:
            t_probs = F.softmax(teacher / tau_t, dim=-1)
        s_logp = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)  # once per crop, not per pair
        t_chunks, s_chunks = t_probs.chunk(g), s_logp.chunk(v)
        pairs = view_pairs(g, v, num_global, self.pairing)
        loss = sum(-(t_chunks[i] * s_chunks[j]).sum(dim=-1).mean() for i, j in pairs) / len(pairs)
        if self.centering == "ema" and self.training:
            self.update_center(teacher_logits.detach())
        return {"loss": loss, "teacher_probs": t_probs, "student_log_probs": s_logp}

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        batch_center = teacher_logits.float().sum(dim=0, keepdim=True)
        count = torch.tensor([teacher_logits.shape[0]], device=teacher_logits.device, dtype=torch.float32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_center)
            dist.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)
