"""timm models as teachers, by timm name including the pretrained tag: `vit_small_patch16_224.dino`,
`vit_small_patch14_dinov2.lvd142m`, `vit_base_patch16_dinov3.lvd1689m`, `vit_base_patch16_224.mae`, ...

- A timm *classifier* (its pretrained cfg has classes) keeps its logits as prototypes.
- A timm *backbone* (num_classes 0: every DINO/DINOv2/DINOv3/MAE tag) has no SSL head, so it becomes a
  headless teacher (feature objective) unless `teacher.head_checkpoint` names a head — never a random head.

Weights: `teacher.checkpoint` (a local .safetensors / .pth in timm's or the original release's layout: timm's
own checkpoint filter converts e.g. DINOv2's `dinov2_vits14_pretrain.pth`), read safely by rob_ray and
handed to timm as a state_dict; else `teacher.pretrained=true` lets timm fetch them (needs network or cache).
Normalisation comes from the tag's pretrained cfg (DINOv3 `sat493m` uses its own mean/std).
"""

from __future__ import annotations

import timm

from rob_ray.models.teachers.base import Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import load_weights, strip_prefix
from rob_ray.models.teachers.registry import register_teacher

__all__ = ["build_timm_teacher", "create_timm_backbone", "timm_has_classifier"]


def create_timm_backbone(arch: str, *, pretrained: bool = False, num_classes: int | None = 0,
                         checkpoint: str | None = None, state: dict | None = None):
    """timm model; `num_classes=None` keeps the model's own classifier. `checkpoint` is read with rob_ray's
    safe loader (or its already read `state` is given) and passed to timm as a state_dict, so timm's
    checkpoint filter (layout conversion) applies."""
    kwargs = {"pretrained": pretrained}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if any(t in arch for t in ("vit", "deit", "eva")):
        kwargs["dynamic_img_size"] = True  # teachers see non-224 global crops on small data
    if checkpoint:
        if state is None:
            state = strip_prefix(load_weights(checkpoint), "module.")
        # The overlay's class count must be the model's, or timm drops the file's classifier as "mismatched".
        overlay = {"state_dict": state}
        if num_classes:
            overlay["num_classes"] = num_classes
        kwargs["pretrained_cfg_overlay"] = overlay
        kwargs["pretrained"] = True
    try:
        return timm.create_model(arch, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise TeacherLoadError(f"teacher.arch '{arch}' is not a timm model") from None
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = next((ln for ln in lines if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))),
                     lines[0] if lines else type(exc).__name__)[:240]
        if checkpoint:
            raise TeacherLoadError(
                f"'{checkpoint}' does not fit timm model '{arch}' ({first}); set teacher.arch to the model it was saved from"
            ) from None
        raise TeacherLoadError(f"could not create timm model '{arch}': {first}") from None
    except (OSError, ValueError) as exc:
        raise TeacherLoadError(
            f"timm could not fetch weights for '{arch}' ({type(exc).__name__}); offline, set teacher.checkpoint "
            "to a local file (or teacher.name to a catalogue entry placed in the cache)"
        ) from None


def timm_has_classifier(arch: str) -> bool:
    """Does timm's pretrained cfg for this name carry a classifier (num_classes > 0)?"""
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception:  # names without a pretrained tag still have a default cfg; be permissive
        cfg = None
    return bool(cfg is not None and getattr(cfg, "num_classes", 0))


@register_teacher("timm")
def build_timm_teacher(cfg) -> Teacher:
    if not cfg.arch:
        raise TeacherLoadError("teacher.kind=timm needs teacher.arch (a timm model name, e.g. vit_small_patch14_dinov2.lvd142m)")
    keep_classifier = timm_has_classifier(cfg.arch) and not cfg.head_checkpoint
    num_classes, state = (None if keep_classifier else 0), None
    if cfg.checkpoint and keep_classifier:
        # The file decides how many classes the teacher has (a 10-class classifier is a 10-class KD teacher),
        # not timm's default for the name (1000); a file without a classifier is a backbone-only teacher.
        state = strip_prefix(load_weights(cfg.checkpoint), "module.")
        num_classes = _file_classes(state, cfg.arch)
    model = create_timm_backbone(cfg.arch, pretrained=cfg.pretrained, num_classes=num_classes,
                                 checkpoint=cfg.checkpoint, state=state)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    common = dict(mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]), patch_size=_patch_size(model))
    head = model.get_classifier() if keep_classifier else None
    if head is not None and getattr(head, "out_features", 0):
        model.reset_classifier(0)
        return Teacher(model, head, num_prototypes=head.out_features, embed_dim=head.in_features,
                       name=f"timm:{cfg.arch}", **common)
    from rob_ray.models.teachers.headless import attach_head

    width = int(getattr(model, "head_hidden_size", None) or model.num_features)
    label = "backbone only" if not cfg.head_checkpoint else f"+ head {cfg.head_checkpoint}"
    return attach_head(model, cfg, embed_dim=width, name=f"timm:{cfg.arch} ({label})", **common)


def _file_classes(state: dict, arch: str) -> int:
    """The class count of the classifier a timm-layout file holds (0 = none: a backbone-only file)."""
    classifier = getattr(timm.models.get_pretrained_cfg(arch), "classifier", None) or "head"
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    for name in names:
        w = state.get(f"{name}.weight")
        if w is not None and getattr(w, "ndim", 0) == 2:
            return int(w.shape[0])
    return 0


def _patch_size(model) -> int | None:
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    return int(ps[0]) if isinstance(ps, tuple | list) else (int(ps) if ps else None)
