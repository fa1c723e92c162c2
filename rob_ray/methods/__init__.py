"""Methods: one module per RoB objective, built from `cfg.method` by `build_method`."""

from __future__ import annotations

from rob_ray.methods.base import Method, StepOutput, Views

__all__ = ["Method", "StepOutput", "Views", "build_method"]


def build_method(method_cfg, teacher, student) -> Method:
    """The method object for `cfg.method` (the only place that maps method config to objects).

    iBOT and MSN adapt the student in place (a mask token; an MSN projector instead of the DINO
    head): build the method before the optimiser and before loading a student checkpoint.
    """
    from rob_ray.losses import build_loss

    if method_cfg.name == "dino":
        from rob_ray.methods.dino import DinoMethod

        return DinoMethod(teacher, student, build_loss(method_cfg, teacher.num_prototypes))
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
