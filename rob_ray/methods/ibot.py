"""RoB-iBOT: a frozen iBOT teacher (class and patch tokens of the unmasked global views) vs a ViT
student whose global views are block-masked (iBOT, Zhou et al. 2021; RoB, Duval et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rob_ray.losses.ibot import IbotLoss
from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.dino import DINO_PROTOTYPES_KEY
from rob_ray.methods.models import dino_student, state_shape
from rob_ray.methods.needs import is_vit
from rob_ray.methods.registry import MethodEntry, register_method
from rob_ray.models.masking import ibot_masks, ibot_masks_keyed, step_rng
from rob_ray.models.vit_tokens import add_mask_token, vit_patch_size

__all__ = ["IbotMethod"]


class IbotMethod(Method):
    """The student carries iBOT's learnable mask token (added by `ibot_student`, so the loop optimises and
    checkpoints it); the registry's needs guarantee a ViT student and a teacher patch head.

    Step: masks (G * B, h, w) for the global views -> teacher CLS + patch scores on the unmasked
    globals -> student CLS scores on all views + shared-head scores of its masked patches -> IbotLoss.
    """

    name = "ibot"

    def __init__(self, teacher, student, loss: IbotLoss, pred_ratio: Sequence[float] = (0.0, 0.3),
                 pred_ratio_var: Sequence[float] = (0.0, 0.2), pred_shape: str = "block",
                 pred_aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> None:
        super().__init__(teacher, student)
        self.loss = loss
        self.patch = vit_patch_size(student.backbone)
        self.pred_ratio, self.pred_ratio_var = tuple(pred_ratio), tuple(pred_ratio_var)
        self.pred_shape, self.pred_aspect_ratio = pred_shape, tuple(pred_aspect_ratio)

    def masks_for(self, globals_: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """(G * B, h, w) bool masks for the global crops, drawn on CPU: per image from its key (`Views.keys`:
        the same masks whatever rank or batch slot the image lands in), else from torch's global RNG."""
        h, w = globals_.shape[-2] // self.patch[0], globals_.shape[-1] // self.patch[1]
        if keys is not None:
            return ibot_masks_keyed(keys.tolist(), globals_.shape[0] // len(keys), h, w, self.pred_ratio,
                                    self.pred_ratio_var, self.pred_shape, self.pred_aspect_ratio)
        return ibot_masks(globals_.shape[0], h, w, step_rng(), self.pred_ratio, self.pred_ratio_var,
                          self.pred_shape, self.pred_aspect_ratio)

    def calls_run_teacher(self) -> bool:
        return self.loss.lambda2 <= 0  # with the patch loss: `teacher.forward_with_patches`

    def forward(self, views: Views, run_teacher: Callable, run_student: Callable, step: int) -> StepOutput:
        masks = self.masks_for(views.globals_, views.keys).to(views.globals_.device)
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
        out = self.loss(s_cls, s_patch, t_cls, t_patch, masks, num_teacher_views=views.num_global,
                        num_global=views.num_global)
        self._last = {"loss/cls": out["cls"], "loss/patch": out["patch"], "mask_ratio": masks.float().mean()}
        return StepOutput(out["loss"], out["teacher_probs"], out["student_log_probs"])

    def extra_metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in getattr(self, "_last", {}).items()}


def ibot_student(cfg, num_prototypes: int):
    """ViT + DINO head shared by CLS and patch tokens + iBOT's mask token (zeros, iBOT's `masked_embed`)."""
    student = dino_student(cfg, num_prototypes)
    if is_vit(student.backbone):  # a CNN student is refused by the `vit_student` need right after
        add_mask_token(student)
    return student


def _loss(m, teacher) -> IbotLoss:
    return IbotLoss(teacher_temp=m.teacher_temp, teacher_patch_temp=m.teacher_patch_temp, student_temp=m.student_temp,
                    lambda1=m.lambda1, lambda2=m.lambda2, pairing=m.pairing)


register_method(MethodEntry(
    name="ibot", config="IbotMethodConfig", method=IbotMethod, build_loss=_loss,
    needs=lambda m: ("teacher_head", "teacher_patch_head", *(("patch_prototypes_match",) if m.lambda2 > 0 else ()),
                     "vit_student"),
    method_kwargs=lambda m: dict(pred_ratio=m.pred_ratio, pred_ratio_var=m.pred_ratio_var, pred_shape=m.pred_shape,
                                 pred_aspect_ratio=m.pred_aspect_ratio),
    head_width=lambda cfg, teacher: (int(teacher.num_prototypes), "prototype count"),
    build_student=lambda cfg, teacher: ibot_student(cfg, teacher.num_prototypes),
    restore_student=lambda cfg, state: ibot_student(cfg, state_shape(state, DINO_PROTOTYPES_KEY)),
    summary="λ1 CLS term + λ2 masked-patch term against an iBOT teacher's CLS and patch heads",
))
