"""RoB-DINO: the frozen teacher's prototype scores on the global views vs the student on all views."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from rob_ray.losses.dino import DinoLoss
from rob_ray.methods.base import Method, StepOutput, Views

__all__ = ["DinoMethod"]


class DinoMethod(Method):
    name = "dino"

    def __init__(self, teacher, student, loss: DinoLoss) -> None:
        super().__init__(teacher, student)
        self.loss = loss
        self._usage: torch.Tensor | None = None  # teacher top-1 prototype counts since the last log (not checkpointed)

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        with torch.no_grad():
            t_logits = run_teacher(views.globals_)
        s_logits = run_student(views.crops())
        out = self.loss(s_logits, t_logits, num_global=views.num_global)
        with torch.no_grad():
            counts = torch.bincount(out["teacher_probs"].argmax(-1), minlength=out["teacher_probs"].shape[-1])
            self._usage = counts if self._usage is None else self._usage + counts
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def extra_metrics(self) -> dict[str, Any]:
        """Teacher prototype usage over the steps since the last log (this worker's batches): the share of
        prototypes that were some image's top-1 target, and the perplexity of the top-1 histogram."""
        if self._usage is None:
            return {}
        c = self._usage.double()
        self._usage = None
        p = c / c.sum().clamp_min(1)
        entropy = float(-(p * p.clamp_min(1e-300).log()).sum())
        return {"teacher_prototypes_used_frac": float((c > 0).sum()) / c.numel(),
                "teacher_usage_perplexity": math.exp(entropy)}
