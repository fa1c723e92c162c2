"""Checks that run before any Ray work: the data lists, the teacher loads, the student fits it.

A mismatch found here costs a second; found on a cluster it costs a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rob_ray.config import Config, ConfigError
from rob_ray.data.sources import ImageTable, scan_images

__all__ = ["Preflight", "preflight"]


@dataclass
class Preflight:
    table: ImageTable
    teacher: Any
    student: Any
    plan: dict[str, Any]


def preflight(cfg: Config, table: ImageTable | None = None) -> Preflight:
    """Scan the data, build teacher and student on CPU, check they fit. Raises ConfigError-like errors."""
    from rob_ray.data.schedule import SampleSchedule
    from rob_ray.models import build_student, build_teacher
    from rob_ray.train.launch import resource_plan

    if table is None:
        table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                            cfg.data.parquet_label_column, cfg.data.max_images)
    teacher = build_teacher(cfg.teacher)
    out_dim = cfg.student.head.out_dim
    if out_dim is not None and out_dim != teacher.num_prototypes:
        raise ConfigError(
            f"config error: student.head.out_dim = {out_dim} but teacher '{teacher.name}' has "
            f"{teacher.num_prototypes} prototypes; remove student.head.out_dim or set it to {teacher.num_prototypes}"
        )
    size, patch = cfg.augment.global_size, teacher.patch_size
    if patch and size % patch:  # the teacher sees only the global crops
        raise ConfigError(
            f"config error: augment.global_size = {size} is not a multiple of the teacher's patch size {patch}; "
            f"use {max(patch, size - size % patch)}"
        )
    student = build_student(cfg.student, out_dim=teacher.num_prototypes)
    from rob_ray.methods import build_method

    build_method(cfg.method, teacher, student)  # method/teacher/student mismatches fail here, before Ray
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
    }
    return Preflight(table=table, teacher=teacher, student=student, plan=plan)
