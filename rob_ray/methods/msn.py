"""RoB-MSN: a frozen MSN target encoder + prototypes vs a ViT student that drops patch tokens of its
global views and is scored against the *teacher's* prototypes (MSN, Assran et al. 2022; RoB,
Duval et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rob_ray.losses.msn import MsnLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.models.masking import msn_keep_indices, step_rng
from rob_ray.models.projectors import MSNProjector
from rob_ray.models.vit_tokens import require_vit, vit_patch_size

__all__ = ["MsnMethod"]


class MsnMethod(Method):
    """Replaces the student's DINO head by a fresh MSN projector (fc1 -> BN -> GELU -> fc2 -> BN ->
    GELU -> fc3) whose output width is the prototypes' width.

    Step: teacher cosine scores on the unmasked globals; student: keep floor(P * (1 - mask_ratio))
    patch tokens (+ the class token) of its global views, all tokens of its local views ->
    projector -> cos(., teacher prototypes) -> MsnLoss.
    """

    name = "msn"

    def __init__(self, teacher, student, loss: MsnLoss, mask_ratio: float = 0.15, projector_hidden_dim: int = 2048,
                 projector_use_bn: bool = True) -> None:
        super().__init__(teacher, student)
        from rob_ray.config import ConfigError

        vit = require_vit(student.backbone, "msn")
        prototypes = getattr(teacher, "prototypes", None)
        if not isinstance(prototypes, torch.Tensor) or prototypes.ndim != 2:
            raise ConfigError(
                f"config error: method.name=msn needs a teacher with frozen prototypes (teacher.kind=msn), got '{teacher.name}'"
            )
        if not isinstance(student.head, MSNProjector):
            student.head = MSNProjector(int(vit.num_features), hidden_dim=projector_hidden_dim,
                                        out_dim=int(prototypes.shape[1]), use_bn=projector_use_bn).to(prototypes.device)
        self.loss = loss
        self.mask_ratio = mask_ratio
        self.patch = vit_patch_size(vit)

    def keep_for(self, globals_: torch.Tensor) -> torch.Tensor | None:
        """(T,) kept patch indices for this step's global crops (one subset per batch, as MSN)."""
        if self.mask_ratio <= 0:
            return None
        num = (globals_.shape[-2] // self.patch[0]) * (globals_.shape[-1] // self.patch[1])
        return msn_keep_indices(num, self.mask_ratio, step_rng()).to(globals_.device)

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        keep = self.keep_for(views.globals_)
        with torch.no_grad():
            t_scores = run_teacher(views.globals_)
        z = run_student(views.crops()) if keep is None else run_student(views.crops(), global_keep=keep)
        prototypes = self.teacher.prototypes
        s_scores = F.normalize(z.float(), dim=-1) @ prototypes.float().T
        out = self.loss(s_scores, t_scores, num_global=views.num_global)
        self._last = {"loss/ce": out["ce"], "loss/me_max": out["me_max"]}
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def extra_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in getattr(self, "_last", {}).items()}
