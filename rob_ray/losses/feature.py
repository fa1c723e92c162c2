"""Feature-level distillation loss for teachers without an SSL head (DINOv2/v3, MAE, backbone-only files).

Not one of the four RoB objectives: the student projector regresses the teacher's L2-normalised
embedding, as in cosine feature distillation. For each (teacher view i, student view v) pair
  loss_iv = mean_b [ 1 - cos(s_{v,b}, t_{i,b}) ],   t = normalize(teacher embedding),
averaged over the same view pairs as RoB-DINO (`rob_ray.losses.pairing`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rob_ray.losses.pairing import batch_and_views, view_pairs

__all__ = ["FeatureLoss"]


class FeatureLoss(nn.Module):
    """Args:
        pairing: "same_view" (RoB: global i <-> teacher i, every local <-> every global) or "swapped" (v != i).

    Forward:
        student_out: (V * B, D) student projector outputs, view-major.
        teacher_emb: (G * B, D) teacher embeddings of the global views (normalised here; any scale).
        num_teacher_views: G; num_global: global crops among the student's V views (keyword, required).
    Returns a dict: `loss` (scalar in [0, 2]), `cosine` (mean cosine over the pairs, detached).
    """

    def __init__(self, pairing: str = "same_view") -> None:
        super().__init__()
        self.pairing = pairing

    def forward(self, student_out: torch.Tensor, teacher_emb: torch.Tensor, *, num_teacher_views: int,
                num_global: int) -> dict[str, torch.Tensor]:
        g = num_teacher_views
        _, v = batch_and_views(teacher_emb.shape[0], student_out.shape[0], g, "embedding")
        if student_out.shape[1] != teacher_emb.shape[1]:
            raise ValueError(
                f"student head has {student_out.shape[1]} outputs but the teacher embedding is {teacher_emb.shape[1]}-d; "
                "the feature objective needs student.head.out_dim unset (= teacher embedding width)"
            )
        t = F.normalize(teacher_emb.float().detach(), dim=-1, eps=1e-6)
        s = F.normalize(student_out.float(), dim=-1, eps=1e-6)  # once per crop, not per pair
        t_chunks, s_chunks = t.chunk(g), s.chunk(v)
        pairs = view_pairs(g, v, num_global, self.pairing)
        cos = sum((t_chunks[i] * s_chunks[j]).sum(dim=-1).mean() for i, j in pairs) / len(pairs)
        return {"loss": 1.0 - cos, "cosine": cos.detach()}
