"""RoB-iBOT: a frozen iBOT teacher (class and patch tokens of the unmasked global views) vs a ViT
student whose global views are block-masked (iBOT, Zhou et al. 2021; RoB, Duval et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rob_ray.losses.ibot import IbotLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.models.masking import ibot_masks, step_rng
from rob_ray.models.vit_tokens import add_mask_token, require_vit, vit_patch_size

__all__ = ["IbotMethod"]


class IbotMethod(Method):
    """Adds iBOT's learnable mask token to the student (so the loop optimises and checkpoints it).

    Step: masks (G * B, h, w) for the global views -> teacher CLS + patch scores on the unmasked
    globals -> student CLS scores on all views + shared-head scores of its masked patches -> IbotLoss.
    """

    name = "ibot"

    def __init__(self, teacher, student, loss: IbotLoss, pred_ratio: Sequence[float] = (0.0, 0.3),
                 pred_ratio_var: Sequence[float] = (0.0, 0.2), pred_shape: str = "block",
                 pred_aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> None:
        super().__init__(teacher, student)
        from rob_ray.config import ConfigError

        vit = require_vit(student.backbone, "ibot")
        if not getattr(teacher, "has_patch_head", False):
            raise ConfigError(
                f"config error: method.name=ibot needs a teacher with a patch head (teacher.kind=ibot), "
                f"got '{teacher.name}'"
            )
        patch_k = getattr(teacher.head, "patch_out_dim", teacher.num_prototypes)
        if loss.lambda2 > 0 and patch_k != teacher.num_prototypes:
            raise ConfigError(
                f"config error: the teacher's patch head has {patch_k} prototypes but its CLS head "
                f"{teacher.num_prototypes}; the shared student head needs equal counts (or set method.lambda2=0)"
            )
        add_mask_token(student)
        self.loss = loss
        self.patch = vit_patch_size(vit)
        self.pred_ratio, self.pred_ratio_var = tuple(pred_ratio), tuple(pred_ratio_var)
        self.pred_shape, self.pred_aspect_ratio = pred_shape, tuple(pred_aspect_ratio)

    def masks_for(self, globals_: torch.Tensor) -> torch.Tensor:
        """(G * B, h, w) bool masks for the global crops, drawn on CPU from torch's global RNG."""
        h, w = globals_.shape[-2] // self.patch[0], globals_.shape[-1] // self.patch[1]
        return ibot_masks(globals_.shape[0], h, w, step_rng(), self.pred_ratio, self.pred_ratio_var,
                          self.pred_shape, self.pred_aspect_ratio)

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        masks = self.masks_for(views.globals_).to(views.globals_.device)
        use_patch = self.loss.lambda2 > 0
        with torch.no_grad():
            if use_patch:
                t_cls, t_patch = self.teacher.forward_with_patches(views.globals_)
            else:
                t_cls, t_patch = run_teacher(views.globals_), None
        if use_patch:
            s_cls, s_patch = run_student(views.crops(), global_mask=masks, return_patches=True)
        else:
            s_cls, s_patch = run_student(views.crops(), global_mask=masks), None
        out = self.loss(s_cls, s_patch, t_cls, t_patch, masks, num_global=views.num_global)
        self._last = {"loss/cls": out["cls"], "loss/patch": out["patch"], "mask_ratio": masks.float().mean()}
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def extra_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in getattr(self, "_last", {}).items()}
