"""The method contract: one RoB objective = what the teacher computes on the global views, what the
student computes on all views, and the loss between them. The loop owns devices, precision,
optimisation, checkpoints and metrics; a method owns only the maths of one step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Method", "StepOutput", "Views"]


@dataclass
class Views:
    """One step's normalised crops, view-major (view 0's B images first).

    globals_: (G * B, 3, Sg, Sg); locals_: (L * B, 3, Sl, Sl) or None; labels: (B,) int64 (-1 = none).
    keys: (B,) int64 CPU tensor, one random key per image, a function of (seed, epoch, image) only, or None;
    methods draw per-image randomness (iBOT masks) from it, so an image's draws do not depend on the rank
    or batch slot it lands in. seed: the run's seed (step-level draws, e.g. MSN's patch subset).
    """

    globals_: torch.Tensor
    locals_: torch.Tensor | None
    labels: torch.Tensor
    batch_size: int
    num_global: int
    keys: torch.Tensor | None = None
    seed: int | None = None

    @property
    def num_local(self) -> int:
        return 0 if self.locals_ is None else self.locals_.shape[0] // self.batch_size

    def crops(self) -> list[torch.Tensor]:
        return [self.globals_] + ([self.locals_] if self.locals_ is not None else [])


@dataclass
class StepOutput:
    """`loss` is what the optimiser minimises; `teacher_probs` (G * B, K) and `student_log_probs`
    (V * B, K) feed the entropy / KL / prototype-usage diagnostics (None when not meaningful)."""

    loss: torch.Tensor
    teacher_probs: torch.Tensor | None = None
    student_log_probs: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] | None = None


class Method(nn.Module):
    """Base class. Subclasses hold their loss module(s) (and any state: centre, queue, EMA teacher)
    as submodules/buffers so that `state_dict()` checkpoints them.

    Call: `method(views, run_teacher, run_student, step)`, where `run_teacher` / `run_student` are the
    (possibly compiled / DDP-wrapped) teacher and student callables and `self.teacher` /
    `self.student` the raw modules (for attributes such as prototypes or patch heads).
    """

    name = "base"
    # state_dict keys whose values differ between workers (checkpointed per rank, see train/rank_state.py)
    rank_local_keys: tuple[str, ...] = ()

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        # Plain attributes, not submodules: the teacher is frozen and the student is checkpointed
        # by the loop; the method's state_dict holds only the method's own state.
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "student", student)

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        raise NotImplementedError

    def calls_run_teacher(self) -> bool:
        """Whether `forward` runs the teacher through `run_teacher` (what the loop may compile); a method that
        calls another entry point of `self.teacher` (`embed`, `forward_with_patches`) returns False."""
        return True

    def set_schedule(self, total_steps: int, steps_per_epoch: int) -> None:
        """Called once by the loop before training: precompute per-step schedules (EMA momentum, temperatures)."""

    def after_optimizer_step(self, step: int) -> None:
        """Hook after each optimiser step (EMA teacher updates live here)."""

    def extra_metrics(self) -> dict[str, Any]:
        return {}
