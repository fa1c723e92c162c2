"""One GPU-memory estimate per training worker and one budget rule (plain torch: the GPU benchmark box
imports this without pydantic or Ray); the bf16 rule is rob_ray/precision.py.

`estimate_memory` measures instead of guessing from layer shapes: the bytes autograd saves for backward
(saved-tensor hooks on a 2-image CPU forward under the run's autocast dtype) at the global and local crop
sizes, the teacher's largest module output (no grad: a layer's input and output live), plus parameters,
gradients, optimiser state, DDP buckets, the loss tensors and the CUDA context. `check_fits` compares
it with `MEMORY_BUDGET` of the worker's GPU share.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from rob_ray.precision import uses_bf16

__all__ = ["CUDA_OVERHEAD_GIB", "GIB", "MEMORY_BUDGET", "check_fits", "estimate_memory", "estimate_worker_memory"]

GIB = float(1 << 30)
CUDA_OVERHEAD_GIB = 1.0  # CUDA context + cuBLAS/cuDNN workspaces, measured ~0.5-1 GiB on recent cards
MEMORY_BUDGET = 0.9  # of the GPU share: allocator fragmentation and fused-kernel workspaces are not modelled


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def saved_bytes_per_image(student: nn.Module, size: int, dtype: torch.dtype | None) -> float:
    """Bytes autograd keeps for backward per image at `size` px (parameters, also saved, not counted)."""
    params = {p.untyped_storage().data_ptr() for p in student.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    x = torch.zeros(2, 3, size, size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(dtype):
        student([x])
    return sum(seen.values()) / 2


def peak_output_bytes_per_image(teacher: nn.Module, size: int, dtype: torch.dtype | None) -> float:
    """Largest single module output for one image through the (no-grad) teacher."""
    peak = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            peak[0] = max(peak[0], out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in teacher.modules()]
    was = teacher.training  # an EMA teacher stays in train mode: the probe must not move its BN statistics
    teacher.eval()
    try:
        with torch.no_grad(), _autocast(dtype):
            teacher(torch.zeros(1, 3, size, size))
    finally:
        teacher.train(was)
        for h in handles:
            h.remove()
    return float(peak[0])


def estimate_memory(teacher: nn.Module, student: nn.Module, *, global_size: int, local_size: int, num_global: int,
                    num_local: int, batch_size: int, num_prototypes: int, bf16: bool, optimizer: str = "adamw",
                    ddp: bool = False) -> dict[str, float]:
    """GiB one training worker's GPU holds, by part; `per_image` grows with `batch_size`, `fixed` does not.

    Parts: teacher weights and (no-grad) activations on the G global crops; student weights + grads +
    optimiser state (AdamW m+v / SGD momentum) (+ DDP's gradient buckets); the student's saved activations
    on all crops; the loss tensors ((2V + G) x K fp32: log-probs, their grad, teacher probs); CUDA context.
    """
    dtype = torch.bfloat16 if bf16 else None
    t_weights = sum(t.numel() * t.element_size() for t in (*teacher.parameters(), *teacher.buffers()))
    per_param = 4 + 4 + (8 if optimizer == "adamw" else 4) + (4 if ddp else 0)
    s_weights = (sum(p.numel() for p in student.parameters()) * per_param
                 + sum(t.numel() * t.element_size() for t in student.buffers()))
    probe = copy.deepcopy(student).train()  # a copy: the probe forward would move BN statistics
    act_global = saved_bytes_per_image(probe, global_size, dtype) * num_global
    act_local = saved_bytes_per_image(probe, local_size, dtype) * num_local if num_local else 0.0
    t_act = 2 * peak_output_bytes_per_image(teacher, global_size, dtype) * num_global
    loss = (2 * (num_global + num_local) + num_global) * num_prototypes * 4
    per_image = (act_global + act_local + t_act + loss) / GIB
    b = batch_size
    parts = {
        "teacher_weights": t_weights / GIB, "teacher_activations": t_act * b / GIB,
        "student_weights_grads_optimizer": s_weights / GIB, "student_activations": (act_global + act_local) * b / GIB,
        "loss": loss * b / GIB, "cuda_overhead": CUDA_OVERHEAD_GIB,
    }
    return {**parts, "total": sum(parts.values()), "per_image": per_image, "fixed": sum(parts.values()) - per_image * b}


def estimate_worker_memory(cfg: Any, teacher: Any, student: nn.Module) -> dict[str, float]:
    """`estimate_memory` for a config (bf16 by `uses_bf16`; logits as wide as the teacher's scores)."""
    a = cfg.augment
    width = int(getattr(teacher, "num_prototypes", 0) or getattr(teacher, "embed_dim", 0))
    return estimate_memory(teacher, student, global_size=a.global_size, local_size=a.local_size,
                           num_global=a.num_global, num_local=a.num_local, batch_size=cfg.optim.batch_size,
                           num_prototypes=width, bf16=uses_bf16(cfg.run.precision, cfg.scaling.use_gpu),
                           optimizer=cfg.optim.optimizer, ddp=cfg.scaling.max_workers > 1)


def check_fits(cfg: Any, teacher: Any, student: nn.Module, est: dict[str, float],
               gpu_memory_gb: float | None = None) -> dict[str, Any]:
    """Raise a one-line ConfigError when `est` exceeds MEMORY_BUDGET of one worker's GPU share; plan entries.

    The GPU size is `gpu_memory_gb`, else `scaling.gpu_memory_gb`, else the driver's GPU 0; with none
    known the check is skipped (and the plan says so). `gpus_per_worker` < 1 gets that fraction."""
    from rob_ray.errors import ConfigError

    gb = gpu_memory_gb or cfg.scaling.gpu_memory_gb
    if gb is None and torch.cuda.is_available():
        gb = torch.cuda.get_device_properties(0).total_memory / GIB
    if gb is None:
        return {"gpu_memory_check": "skipped: set scaling.gpu_memory_gb (e.g. 80 for H100/A100-80GB)"}
    have = gb * min(cfg.scaling.gpus_per_worker, 1.0) * MEMORY_BUDGET  # one process drives one device
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
            f"{cfg.optim.batch_size} x ({a.num_global}x{a.global_size} + {a.num_local}x{a.local_size} px) but "
            f"{MEMORY_BUDGET:.0%} of the GPU is {have:.1f} GiB, short by {est['total'] - have:.1f} GiB; {fix}"
        )
    return {"gpu_memory_needed_gib": round(est["total"], 2), "gpu_memory_available_gib": round(have, 2)}
