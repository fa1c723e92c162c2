"""Supervised KD baseline: the teacher's class logits on the global crops (soft targets at T) plus the
image labels (hard targets) train the student's classifier on all crops."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rob_ray.losses.kd import KDLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.models import state_shape
from rob_ray.methods.registry import MethodEntry, register_method

__all__ = ["KDMethod", "kd_student"]


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
        out = self.loss(s_logits, t_logits, views.labels, num_teacher_views=views.num_global,
                        num_global=views.num_global)
        self._last = {"kd/kl": out["kd"], "kd/ce": out["ce"]}
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def extra_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._last.items()}


def kd_student(cfg, num_classes: int):
    """Backbone + a linear classifier over the teacher's classes (Hinton et al. 2015)."""
    from rob_ray.models.students import Student, build_backbone, feature_width

    backbone = build_backbone(cfg.student)
    return Student(backbone, nn.Linear(feature_width(backbone, cfg.student.feature), num_classes), cfg.student.feature)


register_method(MethodEntry(
    name="kd", config="KDMethodConfig", method=KDMethod,
    build_loss=lambda m, teacher: KDLoss(m.alpha, m.temperature, m.pairing),
    needs=("teacher_head",),
    head_width=lambda cfg, teacher: (int(teacher.num_prototypes), "class count"),
    build_student=lambda cfg, teacher: kd_student(cfg, int(teacher.num_prototypes)),
    restore_student=lambda cfg, state: kd_student(cfg, state_shape(state, "head.weight")),
    summary="(1-α) CE(labels) + α T² KL(teacher ‖ student), a supervised baseline",
))
