"""SSL from scratch, the "no branch replaced" baseline: original DINO (Caron et al. 2021, Alg. 1 and
main_dino.py). The teacher is an EMA of the student; its outputs are centred (momentum 0.9) and
sharpened with a temperature warmed up from 0.04 to 0.07; pairs are swapped (no same-view pair)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from rob_ray.losses.dino import DinoLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.dino import DINO_PROTOTYPES_KEY
from rob_ray.methods.ema import EmaTeacher
from rob_ray.methods.models import dino_student, state_shape
from rob_ray.methods.registry import MethodEntry, register_method
from rob_ray.train.schedules import cosine_schedule, teacher_temp_schedule

__all__ = ["ScratchDinoMethod"]


class ScratchDinoMethod(Method):
    """Args:
        teacher: the EmaTeacher (a submodule here, so the checkpoint carries it); student: the raw student.
        loss: DinoLoss with centering="ema".
        momentum_teacher: base EMA momentum (0.996), cosine to 1 over all steps.
        teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: DINO's temperature warm-up
            (linear over epochs, then constant).
    """

    name = "dino_scratch"

    def __init__(self, teacher: EmaTeacher, student, loss: DinoLoss, momentum_teacher: float = 0.996,
                 teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_epochs: int = 30) -> None:
        super().__init__(teacher, student)
        self.ema = teacher
        self.loss = loss
        self.momentum_teacher = momentum_teacher
        self.temps = (warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)
        self.momentum_sched: np.ndarray | None = None
        self.temp_sched: np.ndarray | None = None

    def set_schedule(self, total_steps: int, steps_per_epoch: int) -> None:
        """All per-step schedules, computed once (main_dino.py: momentum per iteration, temperature per epoch)."""
        self.momentum_sched = cosine_schedule(self.momentum_teacher, 1.0, total_steps)
        warm, final, epochs = self.temps
        self.temp_sched = teacher_temp_schedule(warm, final, epochs, total_steps, steps_per_epoch)

    def _at(self, sched: np.ndarray | None, step: int, what: str) -> float:
        if sched is None:
            raise RuntimeError(f"{what} schedule not set: call set_schedule(total_steps, steps_per_epoch) first")
        return float(sched[min(step, len(sched) - 1)])

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        with torch.no_grad():
            t_logits = run_teacher(views.globals_)
        s_logits = run_student(views.crops())
        self._step = step
        out = self.loss(s_logits, t_logits, num_teacher_views=views.num_global, num_global=views.num_global,
                        teacher_temp=self._at(self.temp_sched, step, "teacher temperature"))
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def after_optimizer_step(self, step: int) -> None:
        self.ema.update(self.student, self._at(self.momentum_sched, step, "teacher momentum"))

    def extra_metrics(self) -> dict[str, float]:
        step = getattr(self, "_step", 0)
        return {"teacher_momentum": self._at(self.momentum_sched, step, "teacher momentum"),
                "teacher_temp": self._at(self.temp_sched, step, "teacher temperature")}


def _loss(m, teacher) -> DinoLoss:
    return DinoLoss(m.out_dim, teacher_temp=m.teacher_temp, student_temp=m.student_temp, centering="ema",
                    center_momentum=m.center_momentum, pairing=m.pairing)


register_method(MethodEntry(
    name="dino_scratch", config="ScratchDinoMethodConfig", method=ScratchDinoMethod, build_loss=_loss,
    teacher="ema", build_teacher=lambda cfg, student: EmaTeacher(student, cfg.method.out_dim),
    method_kwargs=lambda m: dict(momentum_teacher=m.momentum_teacher, teacher_temp=m.teacher_temp,
                                 warmup_teacher_temp=m.warmup_teacher_temp,
                                 warmup_teacher_temp_epochs=m.warmup_teacher_temp_epochs),
    head_width=lambda cfg, teacher: (int(cfg.method.out_dim), "method.out_dim"),
    build_student=lambda cfg, teacher: dino_student(cfg, cfg.method.out_dim),
    restore_student=lambda cfg, state: dino_student(cfg, state_shape(state, DINO_PROTOTYPES_KEY)),
    summary="original DINO from scratch (EMA teacher, centering, τt warm-up): the baseline",
))
