"""RoB-SwAV: Sinkhorn codes of the frozen teacher's prototype scores on its global crops vs the
student's SwAV-head scores on all crops (prototypes: the teacher's frozen ones, or the student's own)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rob_ray.losses.swav import SwavLoss
from rob_ray.methods.base import Method, StepOutput, Views

__all__ = ["SwavMethod"]


class SwavMethod(Method):
    name = "swav"

    def __init__(self, teacher, student, loss: SwavLoss) -> None:
        super().__init__(teacher, student)
        self.loss = loss
        if loss.queue_length > 0:  # each worker queues its own batches' teacher scores
            self.rank_local_keys = ("loss.queue", "loss.queue_count")

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        g = self.loss.num_teacher_views
        head = getattr(self.student, "head", None)
        if hasattr(head, "normalize_prototypes_"):
            head.normalize_prototypes_()  # own prototypes stay on the unit sphere (SwAV, every step)
        with torch.no_grad():
            t_scores = run_teacher(views.globals_[: g * views.batch_size])
        s_scores = run_student(views.crops())
        out = self.loss(s_scores, t_scores, num_global=views.num_global)
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])
