"""RoB-SwAV: Sinkhorn codes of the frozen teacher's prototype scores on its global crops vs the
student's SwAV-head scores on all crops (prototypes: the teacher's frozen ones, or the student's own)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from rob_ray.losses.swav import SwavLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.models import state_shape
from rob_ray.methods.registry import MethodEntry, register_method

__all__ = ["SwavMethod", "swav_student"]


class SwavMethod(Method):
    name = "swav"

    def __init__(self, teacher, student, loss: SwavLoss) -> None:
        super().__init__(teacher, student)
        self.loss = loss

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        g = self.loss.num_teacher_views
        head = getattr(self.student, "head", None)
        if hasattr(head, "normalize_prototypes_"):
            head.normalize_prototypes_()  # own prototypes stay on the unit sphere (SwAV, every step)
        with torch.no_grad():
            t_scores = run_teacher(views.globals_[: g * views.batch_size])
        s_scores = run_student(views.crops())
        out = self.loss(s_scores, t_scores, num_teacher_views=g, num_global=views.num_global)
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])


def swav_student(cfg, dim: int, num_prototypes: int, frozen: torch.Tensor | None = None):
    """Backbone + SwAV projection head into `dim` (the prototypes' dimension D), scored against the
    teacher's frozen (K, D) prototypes (`method.prototypes: teacher`) or K trainable ones of its own."""
    from rob_ray.models.students import Student, build_backbone, feature_width
    from rob_ray.models.swav_head import SwavHead

    backbone = build_backbone(cfg.student)
    in_dim, hidden = feature_width(backbone, cfg.student.feature), cfg.student.head.hidden_dim
    if cfg.method.prototypes == "teacher":
        protos = frozen if frozen is not None else torch.zeros(num_prototypes, dim)  # restore: loaded from the state
        head = SwavHead(in_dim, dim, hidden, frozen_prototypes=protos.detach().cpu())
    else:
        head = SwavHead(in_dim, dim, hidden, num_prototypes=num_prototypes)
    return Student(backbone, head, cfg.student.feature)


def _student_dim(cfg, teacher) -> int:
    """D: the teacher prototypes' dimension, or (own prototypes) student.head.bottleneck_dim."""
    if cfg.method.prototypes == "teacher":
        return int(teacher.prototypes.shape[1])
    return int(cfg.student.head.bottleneck_dim)


def _build_student(cfg, teacher):
    frozen = teacher.prototypes if cfg.method.prototypes == "teacher" else None
    return swav_student(cfg, _student_dim(cfg, teacher), int(teacher.num_prototypes), frozen)


def _restore_student(cfg, state):
    key = "head.frozen_prototypes" if cfg.method.prototypes == "teacher" else "head.prototypes.weight"
    return swav_student(cfg, state_shape(state, key, 1), state_shape(state, key, 0))


def _loss(m, teacher) -> SwavLoss:
    return SwavLoss(teacher.num_prototypes, epsilon=m.epsilon, sinkhorn_iterations=m.sinkhorn_iterations,
                    student_temp=m.student_temp, pairing=m.pairing, queue_length=m.queue_length,
                    num_teacher_views=m.teacher_views)


register_method(MethodEntry(
    name="swav", config="SwavMethodConfig", method=SwavMethod, build_loss=_loss,
    needs=lambda m: ("teacher_head", "teacher_prototypes") if m.prototypes == "teacher" else ("teacher_head",),
    # The student projects into the prototypes' space: its projection width is D, not the count K.
    head_width=lambda cfg, teacher: (_student_dim(cfg, teacher), "prototype dimension"
                                     if cfg.method.prototypes == "teacher" else "student.head.bottleneck_dim"),
    build_student=_build_student, restore_student=_restore_student,
    summary="Sinkhorn-Knopp codes of the teacher's prototype scores; optional queue",
))
