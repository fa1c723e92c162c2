"""Checks that run before any Ray work: the data lists, the teacher loads, the student fits it.

A mismatch found here costs a second; found on a cluster it costs a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rob_ray.config import Config, ConfigError
from rob_ray.data.sources import ImageTable, scan_images
from rob_ray.models.teachers.base import TeacherLoadError

__all__ = ["Preflight", "preflight"]


@dataclass
class Preflight:
    table: ImageTable
    teacher: Any
    student: Any
    plan: dict[str, Any]


def preflight(cfg: Config, table: ImageTable | None = None) -> Preflight:
    """Scan the data, build teacher and student on CPU, check they fit. Raises ConfigError-like errors."""
    from rob_ray.compat import check_compatibility, summary
    from rob_ray.data.schedule import SampleSchedule
    from rob_ray.methods import build_models
    from rob_ray.train.launch import resource_plan

    if table is None:
        table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                            cfg.data.parquet_label_column, cfg.data.max_images)
    try:
        teacher, student = build_models(cfg)  # the method decides: pretrained teacher, or an EMA of the student
    except TeacherLoadError as exc:
        raise ConfigError(f"config error: {exc}") from None
    if cfg.method.name == "kd" and cfg.method.alpha < 1 and bool((table.labels < 0).any()):
        raise ConfigError(
            f"config error: method.alpha = {cfg.method.alpha} uses labels, but {int((table.labels < 0).sum())} of "
            f"{len(table)} images under '{cfg.data.path}' have none; use a labelled ImageFolder (or "
            "data.parquet_label_column) or set method.alpha=1"
        )
    compat = check_compatibility(cfg, teacher, student)  # shapes, patch sizes, normalisation, method needs, memory
    if compat.errors:
        raise ConfigError(compat.errors[0])
    workers = max(cfg.scaling.num_workers, 1)
    try:
        schedule = SampleSchedule(len(table), workers, cfg.optim.batch_size, cfg.optim.epochs, cfg.seed)
    except ValueError as exc:
        raise ConfigError(f"config error: optim.batch_size = {cfg.optim.batch_size}: {exc}") from None
    steps = min(schedule.total_steps, cfg.optim.max_steps or schedule.total_steps)
    plan = {
        **resource_plan(cfg),
        "workers": cfg.scaling.num_workers,
        "images": len(table),
        "labelled_images": int((table.labels >= 0).sum()),
        "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": steps,
        "global_batch": workers * cfg.optim.batch_size,
        "teacher": teacher.name,
        "teacher_params_M": round(teacher.num_parameters() / 1e6, 2),
        "teacher_prototypes": teacher.num_prototypes,
        "student": cfg.student.arch,
        "student_params_M": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
        "views": f"{cfg.augment.num_global}x{cfg.augment.global_size} + {cfg.augment.num_local}x{cfg.augment.local_size}",
        **summary(compat),
    }
    return Preflight(table=table, teacher=teacher, student=student, plan=plan)
