"""Any local weights file (`.safetensors`, `.pth`, `.pt`) as a teacher, through an explicit key mapping.

```yaml
teacher:
  kind: state_dict
  arch: vit_small_patch16_224        # the timm model the backbone keys fit
  checkpoint: my_teacher.safetensors
  key_map:                           # ordered {regex: replacement}, re.sub in turn; '' drops a key
    '^encoder[.]': backbone.
    '^proj_head[.]': head.
    '^decoder[.].*': ''
```

After mapping, every key must start with `backbone.` (timm key names of `arch`) or `head.` (DINO head
names: `mlp.N.*`, `last_layer.weight` or `last_layer.weight_g/_v`). Without `head.*` keys the teacher is
backbone-only (see `headless.py`). Without a key_map, a file whose keys carry neither prefix is read as a
bare backbone. Keys left unmatched are an error that lists a few of them — nothing is silently ignored.
"""

from __future__ import annotations

import timm

from rob_ray.models.teachers.base import Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import apply_key_map, find_state_dict, load_fitting, load_weights, strip_prefix
from rob_ray.models.teachers.registry import register_teacher

__all__ = ["build_state_dict_teacher"]


@register_teacher("state_dict")
def build_state_dict_teacher(cfg) -> Teacher:
    from rob_ray.models.teachers.dino import dino_head_from_state
    from rob_ray.models.teachers.headless import attach_head
    from rob_ray.models.teachers.timm_teacher import _patch_size, create_timm_backbone

    if not cfg.checkpoint or not cfg.arch:
        raise TeacherLoadError("teacher.kind=state_dict needs teacher.checkpoint (a local file) and teacher.arch (timm name)")
    state = find_state_dict(load_weights(cfg.checkpoint), "state_dict", "model", "teacher")
    state = apply_key_map(strip_prefix(state, "module."), cfg.key_map)
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}  # a bare backbone file
    stray = sorted(k for k in state if not k.startswith(("backbone.", "head.")))
    if stray:
        raise TeacherLoadError(
            f"'{cfg.checkpoint}': {len(stray)} keys map to neither backbone.* nor head.* (e.g. {stray[:3]}); "
            "add teacher.key_map rules for them, or map them to '' to drop them"
        )
    backbone_state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    backbone = create_timm_backbone(cfg.arch, num_classes=0)
    missing, unexpected = load_fitting(backbone, backbone_state, source=f"'{cfg.checkpoint}'", arch=cfg.arch)
    if missing or unexpected:
        raise TeacherLoadError(
            f"'{cfg.checkpoint}' backbone keys do not fit timm '{cfg.arch}' ({len(missing)} missing e.g. {missing[:2]}, "
            f"{len(unexpected)} unexpected e.g. {unexpected[:2]}); fix teacher.key_map or teacher.arch"
        )
    width = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    data_cfg = timm.data.resolve_data_config({}, model=backbone)  # the arch's pretrained-cfg normalisation
    common = dict(mean=tuple(data_cfg["mean"]), std=tuple(data_cfg["std"]), patch_size=_patch_size(backbone))
    if not head_state:
        return attach_head(backbone, cfg, embed_dim=width, name=f"state_dict:{cfg.arch} (backbone only)", **common)
    if cfg.head_checkpoint:
        raise TeacherLoadError(f"'{cfg.checkpoint}' already maps a head (head.*); remove teacher.head_checkpoint")
    head = dino_head_from_state(head_state, f"'{cfg.checkpoint}'")
    if head.in_dim != width:
        raise TeacherLoadError(f"'{cfg.checkpoint}': head expects {head.in_dim}-d features, timm '{cfg.arch}' gives {width}-d")
    return Teacher(backbone, head, num_prototypes=head.out_dim, embed_dim=width, name=f"state_dict:{cfg.arch}", **common)
