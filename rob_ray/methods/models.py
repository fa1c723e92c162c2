"""Which teacher and student a method trains with (the one place the loop, preflight and the k-NN
report ask): RoB methods load the pretrained teacher and size the student from it; SSL-from-scratch
needs no teacher file — its teacher is an EMA copy of the student."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from rob_ray.config import Config

__all__ = ["build_models", "needs_pretrained_teacher"]


def needs_pretrained_teacher(method_cfg: Any) -> bool:
    return method_cfg.name != "dino_scratch"


def build_models(cfg: Config, teacher: Any = None) -> tuple[nn.Module, nn.Module]:
    """(teacher, student) for `cfg.method`; pass an already built pretrained `teacher` to reuse it."""
    from rob_ray.models import build_student, build_teacher

    name = cfg.method.name
    if name == "dino_scratch":
        from rob_ray.methods.ema import EmaTeacher

        student = build_student(cfg.student, out_dim=cfg.method.out_dim)
        return EmaTeacher(student, cfg.method.out_dim), student
    if teacher is None:
        import torch

        # The teacher's construction must not consume the global RNG: the student's initial weights
        # then depend on the seed alone, so the k-NN report's "untrained" student is the run's step 0.
        with torch.random.fork_rng(devices=[]):
            teacher = build_teacher(cfg.teacher)
    if name == "swav":
        return teacher, _swav_student(cfg, teacher)
    if name == "kd":
        return teacher, _kd_student(cfg, teacher)
    from rob_ray.errors import ConfigError
    from rob_ray.models.teachers.base import TeacherLoadError
    from rob_ray.models.teachers.headless import student_out_dim

    # Prototype methods size the head from the teacher's prototypes; `feature` from its embedding;
    # a headless teacher with a prototype method is refused there.
    try:
        out_dim = student_out_dim(name, teacher)
    except TeacherLoadError as exc:  # a headless teacher with a prototype method: a config mistake
        raise ConfigError(f"config error: {exc}") from None
    return teacher, build_student(cfg.student, out_dim=out_dim)


def _swav_student(cfg: Config, teacher: Any) -> nn.Module:
    """Backbone + SwAV projection head scoring against the teacher's frozen prototypes (or its own K)."""
    from rob_ray.config import ConfigError
    from rob_ray.models import build_student
    from rob_ray.models.swav_head import SwavHead

    protos = getattr(teacher, "prototypes", None)
    if cfg.method.prototypes == "teacher" and protos is None:
        raise ConfigError(
            f"config error: method.prototypes = 'teacher' needs a teacher with SwAV prototypes (teacher.kind=swav), "
            f"but '{teacher.name}' has none; use teacher.kind=swav or method.prototypes=student"
        )
    # build_student makes the timm backbone; its DINO head is replaced by the SwAV head.
    student = build_student(cfg.student, out_dim=1)
    dim = int(protos.shape[1]) if protos is not None else cfg.student.head.bottleneck_dim
    if cfg.method.prototypes == "teacher":
        student.head = SwavHead(student.head.in_dim, dim, cfg.student.head.hidden_dim, frozen_prototypes=protos.cpu())
    else:
        student.head = SwavHead(student.head.in_dim, dim, cfg.student.head.hidden_dim,
                                num_prototypes=teacher.num_prototypes)
    return student


def _kd_student(cfg: Config, teacher: Any) -> nn.Module:
    """Backbone + a linear classifier over the teacher's classes (Hinton et al. 2015)."""
    from rob_ray.models import build_student

    student = build_student(cfg.student, out_dim=1)
    student.head = nn.Linear(student.head.in_dim, teacher.num_prototypes)
    return student
