"""Supervised KD baseline: the teacher's class logits on the global crops (soft targets at T) plus the
image labels (hard targets) train the student's classifier on all crops."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rob_ray.losses.kd import KDLoss
from rob_ray.methods.base import Method, StepOutput, Views

__all__ = ["KDMethod"]


class KDMethod(Method):
    name = "kd"

    def __init__(self, teacher, student, loss: KDLoss) -> None:
        super().__init__(teacher, student)
        self.loss = loss
        self._last: dict[str, float] = {}

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        with torch.no_grad():
            t_logits = run_teacher(views.globals_)
        s_logits = run_student(views.crops())
        out = self.loss(s_logits, t_logits, views.labels, num_global=views.num_global)
        self._last = {"kd/kl": out["kd"], "kd/ce": out["ce"]}
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def extra_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._last.items()}
