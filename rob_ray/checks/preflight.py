"""Checks that run before any Ray work: the data lists, the teacher loads, the method's needs hold, the
student fits the teacher (`checks.compat`), and teacher + student fit one worker's GPU (`checks.memory`:
the estimate is in every plan as `memory_est_GiB`; the fit is checked on GPU runs).

A mismatch found here costs a second; found on a cluster it costs a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rob_ray.checks.memory import check_fits, estimate_worker_memory
from rob_ray.config import Config, ConfigError
from rob_ray.data.sources import ImageTable, scan_images

__all__ = ["Preflight", "check_cpu_bf16", "check_teacher_fits", "estimate_worker_memory", "preflight"]


@dataclass
class Preflight:
    table: ImageTable
    teacher: Any
    student: Any
    plan: dict[str, Any]


def preflight(cfg: Config, table: ImageTable | None = None) -> Preflight:
    """Scan the data, build teacher and student on CPU, check they fit. Raises ConfigError-like errors."""
    from rob_ray.checks.compat import check_compatibility, summary
    from rob_ray.checks.inputs import check_inputs
    from rob_ray.data.schedule import SampleSchedule
    from rob_ray.methods import build_models
    from rob_ray.storage import is_uri
    from rob_ray.train.launch import plan_for
    from rob_ray.train.resume import check_resumable

    check_inputs(cfg)  # file types, folder layouts, storage, GPU, teacher weights: no model, no Ray
    if table is None:
        table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                            cfg.data.parquet_label_column, cfg.data.max_images)
    if cfg.data.eval_path:  # found missing only after training otherwise
        missing = [sub for sub in ("train", "val") if not (Path(cfg.data.eval_path) / sub).is_dir()]
        if missing:
            absent = " or ".join(m + "/" for m in missing)
            raise ConfigError(f"config error: data.eval_path = '{cfg.data.eval_path}' has no {absent} folder; "
                              "it must hold labelled train/ and val/ ImageFolders (or unset it)")
    teacher, student = build_models(cfg)  # the method decides: pretrained teacher, or an EMA of the student
    if cfg.method.name == "kd" and cfg.method.alpha < 1 and bool((table.labels < 0).any()):
        raise ConfigError(
            f"config error: method.alpha = {cfg.method.alpha} uses labels, but {int((table.labels < 0).sum())} of "
            f"{len(table)} images under '{cfg.data.path}' have none; use a labelled ImageFolder (or "
            "data.parquet_label_column) or set method.alpha=1"
        )
    from rob_ray.methods import build_method

    build_method(cfg.method, teacher, student)  # method/teacher/student mismatches fail here, before Ray
    compat = check_compatibility(cfg, teacher, student)  # shapes, patch sizes, normalisation, method needs, memory
    if compat.errors:
        raise ConfigError(compat.errors[0])
    check_cpu_bf16(cfg, student)
    if not is_uri(cfg.run.storage_path):  # a URI run's old config is pulled and checked by fit()
        check_resumable(cfg, cfg.run_dir())  # after the model checks: a typo'd arch is named as such
    workers = max(cfg.scaling.max_workers, 1)
    try:
        schedule = SampleSchedule(len(table), workers, cfg.optim.batch_size, cfg.optim.epochs, cfg.seed,
                                  cfg.global_batch())
    except ValueError as exc:
        key = "optim.global_batch_size" if cfg.optim.global_batch_size else "optim.batch_size"
        raise ConfigError(f"config error: {key} = {cfg.optim.global_batch_size or cfg.optim.batch_size}: {exc}") from None
    steps = min(schedule.total_steps, cfg.optim.max_steps or schedule.total_steps)
    plan = {
        **plan_for(cfg, table)[1],  # the launch plan on this machine, with its reasons (`why`)
        "workers": cfg.scaling.num_workers,
        "images": len(table),
        "labelled_images": int((table.labels >= 0).sum()),
        "steps_per_epoch": schedule.steps_per_epoch,
        "total_steps": steps,
        "global_batch": schedule.global_batch_size,
        "teacher": teacher.name,
        "teacher_params_M": round(teacher.num_parameters() / 1e6, 2),
        "teacher_prototypes": teacher.num_prototypes,
        "student": cfg.student.arch,
        "student_params_M": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
        "views": f"{cfg.augment.num_global}x{cfg.augment.global_size} + {cfg.augment.num_local}x{cfg.augment.local_size}",
        **summary(compat),
    }
    est = estimate_worker_memory(cfg, teacher, student)
    plan["memory_est_GiB"] = round(est["total"], 2)
    if cfg.students:  # several students share the teacher: each one checked, memory and FLOPs per student + total
        from rob_ray.train.students import students_plan

        plan.update(students_plan(cfg, teacher))
        plan["memory_est_GiB"] = plan["students_memory_est_GiB"]
        plan["student"] = ", ".join(f"{r['name']}={r['arch']}" for r in plan["students"])
    if cfg.scaling.use_gpu:
        plan.update(check_fits(cfg, teacher, student, est))
    else:
        plan.setdefault("notes", []).append("memory check skipped: CPU run (scaling.use_gpu=false)")
    return Preflight(table=table, teacher=teacher, student=student, plan=plan)


def check_cpu_bf16(cfg: Config, student: torch.nn.Module) -> None:
    """`run.precision=bf16` on CPU workers: refuse crop sizes that give a student convolution a 1-pixel input,
    where torch's CPU bf16 backward returns garbage weight gradients (`rob_ray.precision.convs_on_one_pixel`)."""
    if cfg.run.precision != "bf16" or cfg.scaling.use_gpu:
        return
    from rob_ray.precision import convs_on_one_pixel

    a = cfg.augment
    sizes = sorted({a.global_size, *([a.local_size] if a.num_local else [])}, reverse=True)
    try:
        hits = convs_on_one_pixel(getattr(student, "backbone", student), sizes)
    except Exception:  # a backbone that refuses plain square inputs: training says why, not this check
        return
    if hits:
        name, size, (kh, kw) = hits[0]
        raise ConfigError(
            f"config error: run.precision = bf16 on CPU workers: the student's {name} ({kh}x{kw} kernel) gets a "
            f"1-pixel input from {size} px crops, where torch {torch.__version__.split('+')[0]}'s CPU bf16 "
            "convolution backward returns garbage weight gradients; use run.precision=fp32 (or auto), or crops "
            f"of at least {2 * size} px")


# ---------------------------------------------------------------- does the teacher fit beside the student?


def check_teacher_fits(cfg: Config, teacher: Any, student: torch.nn.Module,
                       gpu_memory_gb: float | None = None) -> dict[str, Any]:
    """Raise a one-line ConfigError when teacher + student do not fit one worker's GPU (see checks.memory)."""
    return check_fits(cfg, teacher, student, estimate_worker_memory(cfg, teacher, student), gpu_memory_gb)
