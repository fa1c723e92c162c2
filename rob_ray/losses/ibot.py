"""RoB-iBOT loss (Duval et al. 2023; iBOT, Zhou et al. 2021, main_ibot.py `iBOTLoss`).

loss = lambda1 * L_cls + lambda2 * L_patch, with P_t = softmax(t / tau_t), log P_s = log_softmax(s / tau_s):
- L_cls: mean over view pairs (i, v) (`view_pairs`) of the batch-mean CE(P_t[i], P_s[v]) of the class tokens;
- L_patch: mean over the global views i of the batch mean of
  sum_{p masked in (i, b)} CE(P_t[i, b, p], P_s[i, b, p]) / max(1, #masked(i, b)):
  the student's *masked* patch tokens against the teacher's patch tokens of the same, unmasked view.
The teacher is frozen: no centering (iBOT's EMA centres would only chase a fixed target).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rob_ray.losses.pairing import batch_and_views, view_pairs

__all__ = ["IbotLoss"]


class IbotLoss(nn.Module):
    """Args:
        teacher_temp: tau_t of the class-token term (RoB 0.07).
        teacher_patch_temp: tau_t of the patch term (iBOT 0.07).
        student_temp: tau_s of both terms (0.1).
        lambda1, lambda2: weights of the class-token and patch terms (iBOT 1, 1).
        pairing: view pairs of the class-token term ("same_view" RoB, "swapped" iBOT).

    Forward:
        student_cls: (V * B, K) class-token scores, views stacked view-major.
        student_patch: (G * B, P, K) patch scores of the global views, or only the masked rows
            (M, K) in `masks[masks]` order (the student skips the visible patches).
        teacher_cls: (G * B, K); teacher_patch: (G * B, P, K) of the unmasked global views.
        masks: (G * B, P) or (G * B, h, w) bool, True = masked in the student's input.
        num_teacher_views: G; num_global: global crops among the student's V views (keyword, required).
    Returns a dict: `loss`, `cls`, `patch` (weighted terms), `teacher_probs` (G * B, K) and
    `student_log_probs` (V * B, K) of the class tokens.
    """

    def __init__(self, teacher_temp: float = 0.07, teacher_patch_temp: float = 0.07, student_temp: float = 0.1,
                 lambda1: float = 1.0, lambda2: float = 1.0, pairing: str = "same_view") -> None:
        super().__init__()
        if lambda1 < 0 or lambda2 < 0 or lambda1 + lambda2 == 0:
            raise ValueError(f"lambda1 and lambda2 must be >= 0 and not both 0, got {lambda1}, {lambda2}")
        self.teacher_temp, self.teacher_patch_temp, self.student_temp = teacher_temp, teacher_patch_temp, student_temp
        self.lambda1, self.lambda2, self.pairing = lambda1, lambda2, pairing

    def forward(self, student_cls: torch.Tensor, student_patch: torch.Tensor | None, teacher_cls: torch.Tensor,
                teacher_patch: torch.Tensor | None, masks: torch.Tensor | None, *, num_teacher_views: int,
                num_global: int) -> dict[str, torch.Tensor]:
        g = num_teacher_views
        batch, v = batch_and_views(teacher_cls.shape[0], student_cls.shape[0], g, "cls")
        if student_cls.shape[1] != teacher_cls.shape[1]:
            raise ValueError(
                f"student head has {student_cls.shape[1]} outputs but the teacher has {teacher_cls.shape[1]} prototypes"
            )
        t_probs = F.softmax(teacher_cls.float().detach() / self.teacher_temp, dim=-1)
        s_logp = F.log_softmax(student_cls.float() / self.student_temp, dim=-1)
        zero = s_logp.sum() * 0.0
        cls_term = zero
        if self.lambda1 > 0:
            t_chunks, s_chunks = t_probs.chunk(g), s_logp.chunk(v)
            pairs = view_pairs(g, v, num_global, self.pairing)
            cls_term = sum(-(t_chunks[i] * s_chunks[j]).sum(-1).mean() for i, j in pairs) / len(pairs)
        patch_term = zero
        if self.lambda2 > 0:
            patch_term = self._patch_term(student_patch, teacher_patch, masks, g * batch)
        cls_term, patch_term = self.lambda1 * cls_term, self.lambda2 * patch_term
        return {"loss": cls_term + patch_term, "cls": cls_term.detach(), "patch": patch_term.detach(),
                "teacher_probs": t_probs, "student_log_probs": s_logp}

    def _patch_term(self, student_patch, teacher_patch, masks, rows: int) -> torch.Tensor:
        if student_patch is None or teacher_patch is None or masks is None:
            raise ValueError("lambda2 > 0 needs student_patch, teacher_patch and masks")
        masks = masks.reshape(rows, -1).to(teacher_patch.device)
        if teacher_patch.shape[:2] != masks.shape:
            raise ValueError(f"teacher_patch {tuple(teacher_patch.shape[:2])} does not match masks {tuple(masks.shape)}")
        if student_patch.ndim == 3:
            student_patch = student_patch[masks]
        if student_patch.shape[-1] != teacher_patch.shape[-1]:
            raise ValueError(f"student head has {student_patch.shape[-1]} outputs but the teacher's patch head has "
                             f"{teacher_patch.shape[-1]} prototypes")
        t = F.softmax(teacher_patch[masks].float().detach() / self.teacher_patch_temp, dim=-1)  # (M, K)
        ce = -(t * F.log_softmax(student_patch.float() / self.student_temp, dim=-1)).sum(-1)  # (M,)
        counts = masks.sum(1)  # (G * B,)
        # Each image's masked patches are averaged (>= 1 in the denominator), then images and views.
        weight = 1.0 / (counts.clamp(min=1).float() * rows)
        return (ce * weight.repeat_interleave(counts)).sum()
