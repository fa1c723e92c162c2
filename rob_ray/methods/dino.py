"""RoB-DINO: the frozen teacher's prototype scores on the global views vs the student on all views."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from rob_ray.losses.dino import DinoLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.models import dino_student, state_shape
from rob_ray.methods.registry import MethodEntry, register_method

__all__ = ["DINO_PROTOTYPES_KEY", "DinoMethod"]

# The student's DINO-head prototypes in its state_dict: (K, bottleneck) -> K.
DINO_PROTOTYPES_KEY = "head.last_layer.parametrizations.weight.original1"


class DinoMethod(Method):
    name = "dino"

    def __init__(self, teacher, student, loss: DinoLoss) -> None:
        super().__init__(teacher, student)
        self.loss = loss
        self._usage: torch.Tensor | None = None  # teacher top-1 prototype counts since the last log (not checkpointed)

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        with torch.no_grad():
            t_logits = run_teacher(views.globals_)
        s_logits = run_student(views.crops())
        out = self.loss(s_logits, t_logits, num_teacher_views=views.num_global, num_global=views.num_global)
        with torch.no_grad():
            counts = torch.bincount(out["teacher_probs"].argmax(-1), minlength=out["teacher_probs"].shape[-1])
            self._usage = counts if self._usage is None else self._usage + counts
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def extra_metrics(self) -> dict[str, Any]:
        """Teacher prototype usage over the steps since the last log (this worker's batches): the share of
        prototypes that were some image's top-1 target, and the perplexity of the top-1 histogram."""
        if self._usage is None:
            return {}
        c = self._usage.double()
        self._usage = None
        p = c / c.sum().clamp_min(1)
        entropy = float(-(p * p.clamp_min(1e-300).log()).sum())
        return {"teacher_prototypes_used_frac": float((c > 0).sum()) / c.numel(),
                "teacher_usage_perplexity": math.exp(entropy)}


def _loss(m, teacher) -> DinoLoss:
    return DinoLoss(teacher.num_prototypes, teacher_temp=m.teacher_temp, student_temp=m.student_temp,
                    centering=m.centering, center_momentum=m.center_momentum, pairing=m.pairing,
                    teacher_norm=m.teacher_norm, sinkhorn_iterations=m.sinkhorn_iterations)


register_method(MethodEntry(
    name="dino", config="DinoMethodConfig", method=DinoMethod, build_loss=_loss,
    needs=("teacher_head",),
    head_width=lambda cfg, teacher: (int(teacher.num_prototypes), "prototype count"),
    build_student=lambda cfg, teacher: dino_student(cfg, teacher.num_prototypes),
    restore_student=lambda cfg, state: dino_student(cfg, state_shape(state, DINO_PROTOTYPES_KEY)),
    summary="CE(softmax(t/τt), log_softmax(s/τs)) against the teacher's prototypes",
))
