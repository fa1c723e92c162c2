"""DINO checkpoints (Caron et al. 2021, facebookresearch/dino) as RoB teachers.

Accepted layouts:
- full training checkpoint `{student, teacher, optimizer, epoch, args, dino_loss}`: the *teacher*
  entry holds `backbone.*` + `head.mlp.*` + `head.last_layer.weight_g/_v` (possibly `module.`-prefixed);
- a plain state_dict with `backbone.*` and `head.*` keys (same names, no wrapper).
The head's shape (layers, BN, hidden, bottleneck, prototypes) is read from the tensors themselves.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from rob_ray.models.heads import DINOHead
from rob_ray.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import find_state_dict, load_weights, strip_prefix
from rob_ray.models.teachers.registry import register_teacher
from rob_ray.models.teachers.timm_teacher import _patch_size, create_timm_backbone

__all__ = ["build_dino_teacher", "dino_head_from_state", "split_backbone_head", "timm_arch_from_dino_args"]


def timm_arch_from_dino_args(args: Any) -> str | None:
    """DINO's `args.arch` / `args.patch_size` -> timm name (vit_small + 16 -> vit_small_patch16_224)."""
    arch = getattr(args, "arch", None) if args is not None else None
    if arch is None:
        return None
    if arch.startswith("vit_"):
        return f"{arch}_patch{int(getattr(args, 'patch_size', 16))}_224"
    return arch


def split_backbone_head(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    state = strip_prefix(state, "module.")
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    return backbone, head


def dino_head_from_state(head_state: dict[str, torch.Tensor], source: str = "checkpoint") -> DINOHead:
    """Rebuild a DINOHead with the exact shape of `head_state` and load it (weights unchanged)."""
    linear_idx = sorted({int(m.group(1)) for k in head_state if (m := re.match(r"mlp\.(\d+)\.weight$", k))
                         and head_state[k].ndim == 2})
    single = "mlp.weight" in head_state
    if not linear_idx and not single:
        raise TeacherLoadError(f"{source} has no DINO head (no head.mlp.* weights); use a full checkpoint")
    use_bn = any(k.endswith("running_mean") for k in head_state)
    if "last_layer.weight_v" in head_state:
        v = head_state["last_layer.weight_v"]
        g = head_state.get("last_layer.weight_g", v.norm(dim=1, keepdim=True))
    elif "last_layer.weight" in head_state:
        v = head_state["last_layer.weight"]
        g = v.norm(dim=1, keepdim=True)
    else:
        raise TeacherLoadError(f"{source} has no head.last_layer weights (prototypes)")
    if single:
        in_dim, bottleneck, hidden, nlayers = head_state["mlp.weight"].shape[1], head_state["mlp.weight"].shape[0], 1, 1
    else:
        first, last = head_state[f"mlp.{linear_idx[0]}.weight"], head_state[f"mlp.{linear_idx[-1]}.weight"]
        in_dim, hidden, bottleneck, nlayers = first.shape[1], first.shape[0], last.shape[0], len(linear_idx)
    head = DINOHead(in_dim, v.shape[0], hidden_dim=hidden, bottleneck_dim=bottleneck, num_layers=nlayers,
                    use_bn=use_bn, norm_last_layer=False)
    mapped = {k: t for k, t in head_state.items() if k.startswith("mlp.")}
    mapped["last_layer.parametrizations.weight.original0"] = g.reshape(v.shape[0], 1)
    mapped["last_layer.parametrizations.weight.original1"] = v
    missing, unexpected = head.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise TeacherLoadError(f"{source}: DINO head keys do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return head


@register_teacher("dino")
def build_dino_teacher(cfg) -> Teacher:
    if not cfg.checkpoint:
        raise TeacherLoadError("teacher.kind=dino needs teacher.checkpoint (a DINO full checkpoint .pth)")
    obj = load_weights(cfg.checkpoint)
    state = find_state_dict(obj, "teacher", "state_dict", "model")
    backbone_state, head_state = split_backbone_head(state)
    if not backbone_state:
        raise TeacherLoadError(
            f"'{cfg.checkpoint}' has no backbone.* keys: it is not a DINO teacher checkpoint "
            "(backbone-only *_pretrain.pth files carry no head; use a *_full_checkpoint.pth)"
        )
    if not head_state:
        raise TeacherLoadError(
            f"'{cfg.checkpoint}' has a backbone but no DINO head (head.*); RoB needs the teacher's prototypes - "
            "use the full checkpoint"
        )
    arch = cfg.arch or timm_arch_from_dino_args(obj.get("args"))
    if arch is None:
        raise TeacherLoadError(f"'{cfg.checkpoint}' does not name its architecture; set teacher.arch (e.g. vit_small_patch16_224)")
    backbone = create_timm_backbone(arch, num_classes=0)
    missing, unexpected = backbone.load_state_dict(backbone_state, strict=False)
    if missing or unexpected:
        raise TeacherLoadError(
            f"'{cfg.checkpoint}' does not fit teacher.arch '{arch}' ({len(missing)} missing keys e.g. "
            f"{missing[:1]}, {len(unexpected)} unexpected e.g. {unexpected[:1]}); set teacher.arch to the right model"
        )
    head = dino_head_from_state(head_state, f"'{cfg.checkpoint}'")
    width = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    if width != head.in_dim:
        raise TeacherLoadError(f"backbone width {width} != head input {head.in_dim} in '{cfg.checkpoint}'")
    return Teacher(backbone, head, num_prototypes=head.out_dim, embed_dim=width, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, name=f"dino:{arch}", patch_size=_patch_size(backbone))
