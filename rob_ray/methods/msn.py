"""RoB-MSN: a frozen MSN target encoder + prototypes vs a ViT student that drops patch tokens of its
global views and is scored against the *teacher's* prototypes (MSN, Assran et al. 2022; RoB,
Duval et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rob_ray.losses.msn import MsnLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.models import state_shape
from rob_ray.methods.registry import MethodEntry, register_method
from rob_ray.models.masking import msn_keep_indices, seeded_step_rng, step_rng
from rob_ray.models.projectors import MSNProjector
from rob_ray.models.vit_tokens import vit_patch_size

__all__ = ["MsnMethod"]


class MsnMethod(Method):
    """The student's head is a fresh MSN projector (fc1 -> BN -> GELU -> fc2 -> BN -> GELU -> fc3, built by
    `msn_student`) whose output width is the prototypes' dimension D (not their count K).

    Step: teacher cosine scores on the unmasked globals; student: keep floor(P * (1 - mask_ratio))
    patch tokens (+ the class token) of its global views, all tokens of its local views ->
    projector -> cos(., teacher prototypes) -> MsnLoss.
    """

    name = "msn"

    def __init__(self, teacher, student, loss: MsnLoss, mask_ratio: float = 0.15) -> None:
        super().__init__(teacher, student)
        self.loss = loss
        self.mask_ratio = mask_ratio
        self.patch = vit_patch_size(student.backbone)

    def keep_for(self, globals_: torch.Tensor, seed: int | None = None, step: int = 0) -> torch.Tensor | None:
        """(T,) kept patch indices for this step's global crops (one subset per batch, as MSN): a function of
        (seed, step) when the views carry the run's seed (the same subset on every rank, for any worker
        count), else drawn from torch's global RNG."""
        if self.mask_ratio <= 0:
            return None
        num = (globals_.shape[-2] // self.patch[0]) * (globals_.shape[-1] // self.patch[1])
        rng = seeded_step_rng(seed, step, "msn") if seed is not None else step_rng()
        return msn_keep_indices(num, self.mask_ratio, rng).to(globals_.device)

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        keep = self.keep_for(views.globals_, views.seed, step)
        with torch.no_grad():
            t_scores = run_teacher(views.globals_)
        z = run_student(views.crops()) if keep is None else run_student(views.crops(), global_keep=keep)
        prototypes = self.teacher.prototypes
        s_scores = F.normalize(z.float(), dim=-1) @ prototypes.float().T
        out = self.loss(s_scores, t_scores, num_teacher_views=views.num_global, num_global=views.num_global)
        self._last = {"loss/ce": out["ce"], "loss/me_max": out["me_max"]}
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def extra_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in getattr(self, "_last", {}).items()}


def msn_student(cfg, prototype_dim: int):
    """Backbone + MSN projector whose output is the prototypes' dimension D."""
    from rob_ray.models.students import Student, build_backbone, feature_width

    m = cfg.method
    backbone = build_backbone(cfg.student)
    head = MSNProjector(feature_width(backbone, cfg.student.feature), hidden_dim=m.projector_hidden_dim,
                        out_dim=prototype_dim, use_bn=m.projector_use_bn)
    return Student(backbone, head, cfg.student.feature)


def _loss(m, teacher) -> MsnLoss:
    return MsnLoss(teacher_temp=m.teacher_temp, student_temp=m.student_temp, pairing=m.pairing, sinkhorn=m.sinkhorn,
                   sinkhorn_iters=m.sinkhorn_iters, me_max=m.me_max, me_max_weight=m.me_max_weight)


register_method(MethodEntry(
    name="msn", config="MsnMethodConfig", method=MsnMethod, build_loss=_loss,
    needs=("teacher_head", "teacher_prototypes", "vit_student"),
    method_kwargs=lambda m: dict(mask_ratio=m.mask_ratio),
    # The student projects into the prototypes' space and is scored against them: its width is D, not K.
    head_width=lambda cfg, teacher: (int(teacher.prototypes.shape[1]), "prototype dimension"),
    build_student=lambda cfg, teacher: msn_student(cfg, int(teacher.prototypes.shape[1])),
    restore_student=lambda cfg, state: msn_student(cfg, state_shape(state, "head.fc3.weight")),
    summary="CE against softmax(cos(z, teacher prototypes)/τ); token dropping on the student's global views",
))
