"""Feature objective: the student regresses the frozen teacher's L2-normalised embedding (cosine loss).

For teachers that have no SSL head (timm DINOv2/v3/MAE weights, DINO `*_pretrain.pth`): the config must
ask for it explicitly (`method.name: feature`); it never stands in silently for a missing head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rob_ray.losses.feature import FeatureLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.dino import DINO_PROTOTYPES_KEY
from rob_ray.methods.models import dino_student, state_shape
from rob_ray.methods.registry import MethodEntry, register_method

__all__ = ["FeatureMethod"]


class FeatureMethod(Method):
    name = "feature"

    def __init__(self, teacher, student, loss: FeatureLoss) -> None:
        super().__init__(teacher, student)
        self.loss = loss
        self._cosine: torch.Tensor | None = None

    def calls_run_teacher(self) -> bool:
        return False  # the embedding (`teacher.embed`), not the teacher's forward

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        with torch.no_grad():
            # The embedding, not the head: a teacher with an SSL head still regresses its backbone features.
            t_emb = self.teacher.embed(views.globals_)
        s_out = run_student(views.crops())
        out = self.loss(s_out, t_emb, num_teacher_views=views.num_global, num_global=views.num_global)
        self._cosine = out["cosine"]  # read only when metrics are logged (no per-step device sync)
        return StepOutput(out["loss"], extra={"cosine": out["cosine"]})

    def extra_metrics(self) -> dict[str, float]:
        return {} if self._cosine is None else {"feature/cosine": float(self._cosine)}


register_method(MethodEntry(
    name="feature", config="FeatureMethodConfig", method=FeatureMethod,
    build_loss=lambda m, teacher: FeatureLoss(pairing=m.pairing),
    head_width=lambda cfg, teacher: (int(teacher.embed_dim), "embedding width"),
    build_student=lambda cfg, teacher: dino_student(cfg, int(teacher.embed_dim)),
    restore_student=lambda cfg, state: dino_student(cfg, state_shape(state, DINO_PROTOTYPES_KEY)),
    summary="1 - cos with the teacher's normalised embedding (backbone-only teachers)",
))
