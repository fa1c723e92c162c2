"""RoB-DINO: the frozen teacher's prototype scores on the global views vs the student on all views."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rob_ray.losses.dino import DinoLoss
from rob_ray.methods.base import Method, StepOutput, Views

__all__ = ["DinoMethod"]


class DinoMethod(Method):
    name = "dino"

    def __init__(self, teacher, student, loss: DinoLoss) -> None:
        super().__init__(teacher, student)
        self.loss = loss

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        with torch.no_grad():
            t_logits = run_teacher(views.globals_)
        s_logits = run_student(views.crops())
        out = self.loss(s_logits, t_logits, num_global=views.num_global)
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])
