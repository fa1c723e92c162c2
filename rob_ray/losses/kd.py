"""Supervised knowledge distillation baseline (Hinton et al. 2015, "Distilling the Knowledge in a
Neural Network", Sec. 2): (1 - alpha) CE(labels, s) + alpha T^2 KL(softmax(t / T) || softmax(s / T)).

The T^2 factor keeps the soft term's gradient scale independent of T. The teacher sees the global
crops; the KL term pairs teacher and student views like the RoB losses; the CE term uses every
student view of a labelled image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rob_ray.losses.pairing import batch_and_views, view_pairs

__all__ = ["KDLoss"]


class KDLoss(nn.Module):
    """Args:
        alpha: weight of the distillation term (1 = no labels needed).
        temperature: T (10).
        pairing: "same_view" (teacher view i with student view i and every local) or "swapped".

    Forward:
        student_logits: (V * B, K); teacher_logits: (G * B, K); labels: (B,) int64 (-1 = unlabelled) or None;
        num_teacher_views: G; num_global: global crops among the student's V views (keyword, required).
    Returns a dict: `loss`, `kd`, `ce`, `teacher_probs` (G * B, K), `student_log_probs` (V * B, K) at T.
    Raises ValueError when alpha < 1 and a label is missing.
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 10.0, pairing: str = "same_view") -> None:
        super().__init__()
        if not 0 <= alpha <= 1:
            raise ValueError(f"kd alpha must be in [0, 1], got {alpha}")
        self.alpha, self.temperature, self.pairing = alpha, temperature, pairing

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
                num_teacher_views: int, num_global: int) -> dict[str, torch.Tensor]:
        g = num_teacher_views
        batch, v = batch_and_views(teacher_logits.shape[0], student_logits.shape[0], g, "logits")
        if labels is not None and labels.shape[0] != batch:
            raise ValueError(f"labels has {labels.shape[0]} rows but the batch is {batch}")
        if student_logits.shape[1] != teacher_logits.shape[1]:
            raise ValueError(f"student has {student_logits.shape[1]} logits, the teacher {teacher_logits.shape[1]}")
        temp = self.temperature
        t_probs = F.softmax(teacher_logits.detach().float() / temp, dim=-1)
        t_logp = F.log_softmax(teacher_logits.detach().float() / temp, dim=-1)
        s_logp = F.log_softmax(student_logits.float() / temp, dim=-1)
        t_chunks, tl_chunks, s_chunks = t_probs.chunk(g), t_logp.chunk(g), s_logp.chunk(v)
        pairs = view_pairs(g, v, num_global, self.pairing)
        kd = sum((t_chunks[i] * (tl_chunks[i] - s_chunks[j])).sum(-1).mean() for i, j in pairs) / len(pairs)
        loss = self.alpha * temp**2 * kd
        ce = torch.zeros((), device=student_logits.device)
        if self.alpha < 1:
            if labels is None or bool((labels < 0).any()):
                raise ValueError(
                    "method kd with alpha < 1 needs a label for every image, but the batch has unlabelled images "
                    "(-1); use a labelled ImageFolder / data.parquet_label_column, or set method.alpha=1"
                )
            ce = F.cross_entropy(student_logits.float(), labels.repeat(v))
            loss = loss + (1 - self.alpha) * ce
        return {"loss": loss, "kd": kd.detach(), "ce": ce.detach(), "teacher_probs": t_probs, "student_log_probs": s_logp}
