"""One training step, config-free: the loop, the benchmarks and the tests all run this.

views -> the method (frozen teacher's targets on the global views, student on all views, the loss)
-> backward -> gradient clipping -> non-finite guard -> optimiser step (+ the method's after-step
hook), with the LR and weight decay of that step taken from per-step schedules.

Unreadable images keep their rows (see `rob_ray.data.views`): `row_weight` scales the gradient
that flows back through each row of the student's output, so those rows contribute nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.precision import outside_autocast
from rob_ray.train.faults import NonFiniteGuard
from rob_ray.train.timing import StageClock, Timed

__all__ = ["FUSED_ADAMW_DEVICES", "StepResult", "TrainStep", "make_optimizer", "param_groups", "weight_rows"]


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Biases and norm parameters get no weight decay (DINO utils.get_params_groups)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "regularized": True}, {"params": no_decay, "regularized": False, "weight_decay": 0.0}]


# Devices with torch's fused AdamW kernel. On CPU it halves the optimiser step (14.5 -> 7.8 ms for the
# demo's ResNet-10-T, 2 threads): one parallel region per tensor instead of one per elementwise op.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def make_optimizer(model: nn.Module, kind: str = "adamw", momentum: float = 0.9, fused: bool | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW (or SGD with momentum) over `param_groups(model)`; the step sets LR and weight decay.
    `fused` None: AdamW's fused kernel where torch has one for the model's device (same update to
    float rounding as the per-tensor loop)."""
    groups = param_groups(model)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=momentum)
    if kind != "adamw":
        raise ValueError(f"unknown optimizer '{kind}' (adamw or sgd)")
    if fused is None:
        first = next((p for g in groups for p in g["params"]), None)
        fused = first is not None and first.device.type in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(groups, lr=0.0, fused=fused or None)


class _ScaleRowGrads(torch.autograd.Function):
    """Identity forward; backward multiplies row i's gradient by w[i]."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (w,) = ctx.saved_tensors
        return grad * w.to(grad.dtype).view(-1, *([1] * (grad.ndim - 1))), None


def weight_rows(out: Any, row_weight: torch.Tensor, batch_size: int) -> Any:
    """Scale the gradient of every row of a student output by its image's weight. Outputs are
    view-major (row r is image r mod B): every tensor (also inside tuples, lists, dicts) whose
    first dimension is a multiple of B and that needs a gradient is wrapped; others pass."""
    if isinstance(out, torch.Tensor):
        if out.requires_grad and out.ndim and out.shape[0] % batch_size == 0:
            return _ScaleRowGrads.apply(out, row_weight.repeat(out.shape[0] // batch_size))
        return out
    if isinstance(out, tuple | list):
        return type(out)(weight_rows(o, row_weight, batch_size) for o in out)
    if isinstance(out, dict):
        return {k: weight_rows(v, row_weight, batch_size) for k, v in out.items()}
    return out


@dataclass
class StepResult:
    out: StepOutput  # the method's output (loss before `loss_weight`, diagnostics)
    loss: torch.Tensor  # what was back-propagated
    grad_norm: torch.Tensor | None
    applied: bool  # False: non-finite loss or gradient, weights and buffers left as they were


def _at(schedule: Sequence[float] | float, step: int) -> float:
    return float(schedule) if isinstance(schedule, int | float) else float(schedule[step])


class TrainStep:
    """`step(views, i)`: one optimisation step of `method` on `views` at step index `i`.

    Args:
        method: a `rob_ray.methods.Method` (owns the loss and any state: centre, queue, EMA teacher).
        student: the raw student module (clipping, the guard and the optimiser act on it).
        optimizer: over `param_groups(student)` (`make_optimizer`).
        lr, weight_decay: per-step schedules (indexable by step) or constants; weight decay is set on
            the regularised group only.
        clip_grad: max total gradient norm (None: no clipping).
        run_teacher, run_student: the callables the method runs (compiled / DDP-wrapped); default
            the method's own teacher and `student`.
        autocast: a context factory (e.g. bf16 autocast on GPU); default none.
        guard: skips non-finite steps (default: a single-process `NonFiniteGuard(10)`).
        clock: a `StageClock` to time the teacher, student and optimiser stages (None: untimed).
        loss_hook: `hook(loss, step)` -> loss before backward (the loop's fault injection).
    """

    def __init__(self, method: Method, student: nn.Module, optimizer: torch.optim.Optimizer, *,
                 lr: Sequence[float] | float, weight_decay: Sequence[float] | float = 0.0,
                 clip_grad: float | None = None, run_teacher: Callable | None = None,
                 run_student: Callable | None = None, autocast: Callable[[], Any] | None = None,
                 guard: NonFiniteGuard | None = None, clock: StageClock | None = None,
                 loss_hook: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> None:
        self.method, self.student, self.optimizer = method, student, optimizer
        self.lr, self.weight_decay, self.clip_grad = lr, weight_decay, clip_grad
        self.autocast = autocast or contextlib.nullcontext
        self.guard = guard if guard is not None else NonFiniteGuard(10)
        self.clock, self.loss_hook = clock, loss_hook
        run_teacher = run_teacher if run_teacher is not None else method.teacher
        run_student = run_student if run_student is not None else student
        if clock is not None:
            run_teacher = Timed(run_teacher, clock, "teacher/forward")
            run_student = Timed(run_student, clock, "student/forward_backward", stop=False)  # closed after backward
        self.run_teacher, self.run_student = run_teacher, run_student

    def set_schedules(self, step: int) -> None:
        lr, wd = _at(self.lr, step), _at(self.weight_decay, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if group.get("regularized", False):
                group["weight_decay"] = wd

    def __call__(self, views: Views, step: int, row_weight: torch.Tensor | None = None, loss_weight: float = 1.0,
                 while_computing: Callable[[], None] | None = None) -> StepResult:
        """`row_weight`: (B,) per-image gradient weights (0 for unreadable images) or None;
        `loss_weight` 0 keeps the step (DDP's all-reduce stays in line) but learns nothing;
        `while_computing`: host work to do while the device computes this step (the loop queues the
        next step's views): called once, right after the teacher's forward is queued, or at the latest
        before the step waits for the device (the non-finite check)."""
        clock = self.clock
        self.set_schedules(step)
        self.guard.remember(self.student, self.method)
        pending = [while_computing] if while_computing is not None else []

        def run_pending() -> None:
            if pending:
                with outside_autocast():  # the next step's views: data work, never in the step's precision
                    while pending:
                        pending.pop()()

        run_teacher, run_student = self.run_teacher, self.run_student
        if pending:
            teacher_call = self.run_teacher

            def run_teacher(*args: Any, **kwargs: Any) -> Any:
                out = teacher_call(*args, **kwargs)
                run_pending()
                return out

        if row_weight is not None:
            inner, b = run_student, views.batch_size

            def run_student(*args: Any, **kwargs: Any) -> Any:
                return weight_rows(inner(*args, **kwargs), row_weight, b)

        with self.autocast():
            out = self.method(views, run_teacher, run_student, step)
        loss = out.loss * loss_weight if loss_weight != 1.0 else out.loss
        if self.loss_hook is not None:
            loss = self.loss_hook(loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clock is not None:
            clock.stop("student/forward_backward")
            clock.start("optimizer")
        grad_norm = nn.utils.clip_grad_norm_(self.student.parameters(), self.clip_grad) if self.clip_grad else None
        run_pending()  # a method that never ran the teacher
        applied = self.guard.step_ok(loss, self.student.parameters(), grad_norm)  # same answer on every rank
        if applied:
            self.optimizer.step()
            self.method.after_optimizer_step(step)
        if clock is not None:
            clock.stop("optimizer")
        return StepResult(out, loss, grad_norm, applied)
