"""Checks that run before any Ray work: the data lists, the teacher loads, the student fits it,
and (GPU runs) teacher + student fit one worker's GPU.

A mismatch found here costs a second; found on a cluster it costs a job.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rob_ray.config import Config, ConfigError
from rob_ray.data.sources import ImageTable, scan_images

__all__ = ["Preflight", "check_teacher_fits", "estimate_worker_memory", "preflight"]

GIB = float(1 << 30)
CUDA_OVERHEAD_GIB = 1.0  # CUDA context + cuBLAS/cuDNN workspaces, measured ~0.5-1 GiB on recent cards


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
    from rob_ray.storage import is_uri
    from rob_ray.train.launch import plan_for
    from rob_ray.train.resume import check_resumable

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
    if not is_uri(cfg.run.storage_path):  # a URI run's old config is pulled and checked by fit()
        check_resumable(cfg, cfg.run_dir())  # after the model checks: a typo'd arch is named as such
    workers = max(cfg.scaling.num_workers, 1)
    try:
        schedule = SampleSchedule(len(table), workers, cfg.optim.batch_size, cfg.optim.epochs, cfg.seed)
    except ValueError as exc:
        raise ConfigError(f"config error: optim.batch_size = {cfg.optim.batch_size}: {exc}") from None
    steps = min(schedule.total_steps, cfg.optim.max_steps or schedule.total_steps)
    plan = {
        **plan_for(cfg, table)[1],  # the launch plan on this machine, with its reasons (`why`)
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
    if cfg.scaling.use_gpu:
        plan.update(check_teacher_fits(cfg, teacher, student))
    return Preflight(table=table, teacher=teacher, student=student, plan=plan)


# ---------------------------------------------------------------- does the teacher fit beside the student?


def _saved_bytes_per_image(student: torch.nn.Module, size: int, dtype: torch.dtype | None) -> float:
    """Bytes autograd keeps for backward per image at `size` px: what training holds per sample.

    Measured (saved-tensor hooks on a 2-image CPU forward under the run's autocast dtype), not
    guessed from layer shapes; parameters (also saved by linear/conv) are not counted here.
    """
    params = {p.untyped_storage().data_ptr() for p in student.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    x = torch.zeros(2, 3, size, size)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        student([x])
    return sum(seen.values()) / 2


def _peak_output_bytes_per_image(teacher: torch.nn.Module, size: int, dtype: torch.dtype | None) -> float:
    """Largest single module output for one image (no grad: only a layer's input and output live)."""
    peak = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            peak[0] = max(peak[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in teacher.modules()]
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    try:
        with torch.no_grad(), autocast:
            teacher(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return float(peak[0])


def estimate_worker_memory(cfg: Config, teacher: Any, student: torch.nn.Module) -> dict[str, float]:
    """GiB one training worker's GPU holds: teacher weights and its (no-grad) activations on the
    global crops, student weights + grads + optimiser state, the student's saved activations on
    all crops, the loss tensors ((2V + G) x B x K fp32: log-probs, their grad, teacher probs),
    and the CUDA context. An estimate (allocator fragmentation is not modelled); `per_image` is
    the part that grows with `optim.batch_size`.
    """
    a, b = cfg.augment, cfg.optim.batch_size
    bf16 = cfg.run.precision in ("auto", "bf16")  # auto = bf16 on GPU
    dtype = torch.bfloat16 if bf16 else None
    t_weights = sum(t.numel() * t.element_size() for t in (*teacher.parameters(), *teacher.buffers()))
    n_student = sum(p.numel() for p in student.parameters())
    per_param = 4 + 4 + (8 if cfg.optim.optimizer == "adamw" else 4)  # weight, grad, AdamW m+v / SGD momentum
    if cfg.scaling.num_workers > 1:
        per_param += 4  # DDP's gradient buckets
    s_weights = n_student * per_param + sum(t.numel() * t.element_size() for t in student.buffers())
    probe = copy.deepcopy(student).train()  # a copy: the probe forward would move BN statistics
    act_global = _saved_bytes_per_image(probe, a.global_size, dtype) * a.num_global
    act_local = _saved_bytes_per_image(probe, a.local_size, dtype) * a.num_local if a.num_local else 0.0
    t_act = 2 * _peak_output_bytes_per_image(teacher, a.global_size, dtype) * a.num_global
    views = a.num_global + a.num_local
    loss = (2 * views + a.num_global) * teacher.num_prototypes * 4
    per_image = (act_global + act_local + t_act + loss) / GIB
    parts = {
        "teacher_weights": t_weights / GIB, "teacher_activations": t_act * b / GIB,
        "student_weights_grads_optimizer": s_weights / GIB, "student_activations": (act_global + act_local) * b / GIB,
        "loss": loss * b / GIB, "cuda_overhead": CUDA_OVERHEAD_GIB,
    }
    return {**parts, "total": sum(parts.values()), "per_image": per_image, "fixed": sum(parts.values()) - per_image * b}


def check_teacher_fits(cfg: Config, teacher: Any, student: torch.nn.Module,
                       gpu_memory_gb: float | None = None) -> dict[str, Any]:
    """Raise a one-line ConfigError when teacher + student do not fit one worker's GPU.

    The GPU size is `gpu_memory_gb`, else `scaling.gpu_memory_gb`, else the driver's GPU 0; with
    none known the check is skipped (and the plan says so). A worker with a GPU fraction
    (`gpus_per_worker` < 1) gets that fraction of the memory. Returns plan entries.
    """
    gb = gpu_memory_gb or cfg.scaling.gpu_memory_gb
    if gb is None and torch.cuda.is_available():
        gb = torch.cuda.get_device_properties(0).total_memory / GIB
    if gb is None:
        return {"gpu_memory_check": "skipped: set scaling.gpu_memory_gb (e.g. 80 for H100/A100-80GB)"}
    have = gb * min(cfg.scaling.gpus_per_worker, 1.0)  # one process drives one device
    est = estimate_worker_memory(cfg, teacher, student)
    if est["total"] > have:
        a = cfg.augment
        fit_b = math.floor((have - est["fixed"]) / est["per_image"]) if est["per_image"] > 0 else 0
        fix = (f"lower optim.batch_size to {fit_b} or fewer local crops, or use a bigger GPU" if fit_b >= 1 else
               "even one image per step does not fit: use a GPU with more memory or a smaller teacher/student")
        detail = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in est.items()
                           if k not in ("total", "per_image", "fixed"))
        raise ConfigError(
            f"resource error: teacher '{teacher.name}' ({teacher.num_parameters() / 1e6:.1f}M params) does not fit beside "
            f"student '{cfg.student.arch}' on one worker GPU: needs ~{est['total']:.1f} GiB ({detail}) at batch "
            f"{cfg.optim.batch_size} x ({a.num_global}x{a.global_size} + {a.num_local}x{a.local_size} px) but has "
            f"{have:.1f} GiB, short by {est['total'] - have:.1f} GiB; {fix}"
        )
    return {"gpu_memory_needed_gib": round(est["total"], 2), "gpu_memory_available_gib": round(have, 2)}
