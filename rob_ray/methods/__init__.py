"""Methods: one module per RoB objective, built from `cfg.method` by `build_method`."""

from __future__ import annotations

from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.models import build_models, needs_pretrained_teacher

__all__ = ["Method", "StepOutput", "Views", "build_method", "build_models", "needs_pretrained_teacher"]


def build_method(method_cfg, teacher, student) -> Method:
    """The method object for `cfg.method` (the only place that maps method config to objects).

    iBOT and MSN adapt the student in place (a mask token; an MSN projector instead of the DINO
    head): build the method before the optimiser and before loading a student checkpoint.
    """
    from rob_ray.losses import build_loss

    if method_cfg.name == "dino":
        from rob_ray.methods.dino import DinoMethod

        return DinoMethod(teacher, student, build_loss(method_cfg, teacher.num_prototypes))
    if method_cfg.name == "feature":
        from rob_ray.losses.feature import FeatureLoss
        from rob_ray.methods.feature import FeatureMethod

        return FeatureMethod(teacher, student, FeatureLoss(pairing=method_cfg.pairing))
    if method_cfg.name == "swav":
        from rob_ray.losses.swav import SwavLoss
        from rob_ray.methods.swav import SwavMethod

        m = method_cfg
        loss = SwavLoss(teacher.num_prototypes, epsilon=m.epsilon, sinkhorn_iterations=m.sinkhorn_iterations,
                        student_temp=m.student_temp, pairing=m.pairing, queue_length=m.queue_length,
                        num_teacher_views=m.teacher_views)
        return SwavMethod(teacher, student, loss)
    if method_cfg.name == "kd":
        from rob_ray.losses.kd import KDLoss
        from rob_ray.methods.kd import KDMethod

        return KDMethod(teacher, student, KDLoss(method_cfg.alpha, method_cfg.temperature, method_cfg.pairing))
    if method_cfg.name == "dino_scratch":
        from rob_ray.losses.dino import DinoLoss
        from rob_ray.methods.dino_scratch import ScratchDinoMethod

        m = method_cfg
        loss = DinoLoss(m.out_dim, teacher_temp=m.teacher_temp, student_temp=m.student_temp, centering="ema",
                        center_momentum=m.center_momentum, pairing=m.pairing)
        return ScratchDinoMethod(teacher, student, loss, momentum_teacher=m.momentum_teacher,
                                 teacher_temp=m.teacher_temp, warmup_teacher_temp=m.warmup_teacher_temp,
                                 warmup_teacher_temp_epochs=m.warmup_teacher_temp_epochs)
    if method_cfg.name == "ibot":
        from rob_ray.methods.ibot import IbotMethod

        return IbotMethod(teacher, student, build_loss(method_cfg, teacher.num_prototypes),
                          pred_ratio=method_cfg.pred_ratio, pred_ratio_var=method_cfg.pred_ratio_var,
                          pred_shape=method_cfg.pred_shape, pred_aspect_ratio=method_cfg.pred_aspect_ratio)
    if method_cfg.name == "msn":
        from rob_ray.methods.msn import MsnMethod

        return MsnMethod(teacher, student, build_loss(method_cfg, teacher.num_prototypes),
                         mask_ratio=method_cfg.mask_ratio, projector_hidden_dim=method_cfg.projector_hidden_dim,
                         projector_use_bn=method_cfg.projector_use_bn)
    raise ValueError(f"unknown method '{method_cfg.name}'")
