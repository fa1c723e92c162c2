"""timm backbones as teachers. A timm classifier's logits can act as prototypes; a backbone
without a head needs an SSL head from a checkpoint (kind=dino) — never a random one."""

from __future__ import annotations

import timm

from rob_ray.models.teachers.base import Teacher, TeacherLoadError
from rob_ray.models.teachers.registry import register_teacher

__all__ = ["build_timm_teacher", "create_timm_backbone"]


def create_timm_backbone(arch: str, *, pretrained: bool = False, num_classes: int | None = 0,
                         checkpoint: str | None = None):
    """timm model; `num_classes=None` keeps the model's own classifier."""
    kwargs = {"pretrained": pretrained}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if any(t in arch for t in ("vit", "deit", "eva")):
        kwargs["dynamic_img_size"] = True  # teachers see non-224 global crops on small data
    if checkpoint:
        kwargs["pretrained_cfg_overlay"] = {"file": checkpoint}
        kwargs["pretrained"] = True
    try:
        return timm.create_model(arch, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise TeacherLoadError(f"teacher.arch '{arch}' is not a timm model") from None
        raise TeacherLoadError(f"could not create timm model '{arch}': {str(exc).splitlines()[0]}") from None
    except (OSError, ValueError) as exc:
        raise TeacherLoadError(
            f"timm could not fetch weights for '{arch}' ({type(exc).__name__}); offline, set teacher.checkpoint "
            "to a local file"
        ) from None


@register_teacher("timm")
def build_timm_teacher(cfg) -> Teacher:
    if not cfg.arch:
        raise TeacherLoadError("teacher.kind=timm needs teacher.arch (a timm model name)")
    model = create_timm_backbone(cfg.arch, pretrained=cfg.pretrained, num_classes=None, checkpoint=cfg.checkpoint)
    head = model.get_classifier()
    if getattr(head, "out_features", 0) == 0:
        raise TeacherLoadError(
            f"timm model '{cfg.arch}' has no classifier to use as prototypes; use teacher.kind=dino with a head checkpoint"
        )
    model.reset_classifier(0)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    return Teacher(model, head, num_prototypes=head.out_features, embed_dim=head.in_features,
                   mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]), name=f"timm:{cfg.arch}",
                   patch_size=_patch_size(model))


def _patch_size(model) -> int | None:
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    return int(ps[0]) if isinstance(ps, tuple | list) else (int(ps) if ps else None)
