"""DINO checkpoints (Caron et al. 2021, facebookresearch/dino) as RoB teachers.

Accepted layouts:
- full training checkpoint `{student, teacher, optimizer, epoch, args, dino_loss}`: the *teacher*
  entry holds `backbone.*` + `head.mlp.*` + `head.last_layer.weight_g/_v` (possibly `module.`-prefixed);
  `args` (argparse.Namespace) names the architecture and is cross-checked against the head tensors;
- a plain state_dict with `backbone.*` and `head.*` keys (same names, no wrapper);
- backbone-only `*_pretrain.pth` (ViT or ResNet-50, bare timm/torchvision keys): no SSL head, so it needs
  `teacher.head_checkpoint` or `method.name: feature` (see `headless.py`). The architecture comes from
  `teacher.arch`, `args`, or the official file name (`dino_deitsmall16_pretrain.pth` -> vit_small_patch16_224).
The head's shape (layers, BN, hidden, bottleneck, prototypes) is read from the tensors themselves; with BN
in the head (DINO ResNet-50) the Linear indices shift (mlp.0, mlp.3, ...) and the BN running stats load too.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from rob_ray.models.heads import DINOHead
from rob_ray.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import find_state_dict, load_fitting, load_weights, strip_prefix
from rob_ray.models.teachers.registry import register_teacher
from rob_ray.models.teachers.timm_teacher import _patch_size, create_timm_backbone

__all__ = ["arch_from_dino_filename", "build_dino_teacher", "dino_head_from_state", "head_shape",
           "split_backbone_head", "timm_arch_from_dino_args"]

# The official release names (README of facebookresearch/dino) -> timm architectures.
_DINO_FILE_ARCH = {
    "deitsmall16": "vit_small_patch16_224", "deitsmall8": "vit_small_patch8_224",
    "vitbase16": "vit_base_patch16_224", "vitbase8": "vit_base_patch8_224", "resnet50": "resnet50",
}


def timm_arch_from_dino_args(args: Any) -> str | None:
    """DINO's `args.arch` / `args.patch_size` -> timm name (vit_small + 16 -> vit_small_patch16_224)."""
    if isinstance(args, dict):  # some forks save vars(args)
        args = argparse.Namespace(**args)
    arch = getattr(args, "arch", None) if args is not None else None
    if arch is None:
        return None
    arch = arch.replace("deit_", "vit_")  # early DINO runs named ViT-S 'deit_small'
    if arch.startswith("vit_"):
        return f"{arch}_patch{int(getattr(args, 'patch_size', 16))}_224"
    return arch


def arch_from_dino_filename(path: str) -> str | None:
    """`dino_vitbase8_pretrain.pth` -> vit_base_patch8_224 (None for other names)."""
    m = re.match(r"dino_([a-z]+\d+)_pretrain", Path(path).name)
    return _DINO_FILE_ARCH.get(m.group(1)) if m else None


def split_backbone_head(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    state = strip_prefix(state, "module.")
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    head = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    return backbone, head


def head_shape(head_state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """DINO head shape read from its tensors: in_dim, hidden, bottleneck, layers, use_bn, out_dim."""
    linear_idx = sorted({int(m.group(1)) for k in head_state if (m := re.match(r"mlp\.(\d+)\.weight$", k))
                         and head_state[k].ndim == 2})
    single = "mlp.weight" in head_state
    if not linear_idx and not single:
        raise TeacherLoadError(f"{source} has no DINO head (no head.mlp.* weights); use a full checkpoint")
    if "last_layer.weight_v" in head_state:
        out_dim = head_state["last_layer.weight_v"].shape[0]
    elif "last_layer.weight" in head_state:
        out_dim = head_state["last_layer.weight"].shape[0]
    else:
        raise TeacherLoadError(f"{source} has no head.last_layer weights (prototypes)")
    use_bn = any(k.endswith("running_mean") for k in head_state)
    if single:
        w = head_state["mlp.weight"]
        return dict(in_dim=w.shape[1], hidden=None, bottleneck=w.shape[0], layers=1, use_bn=use_bn, out_dim=out_dim)
    first, last = head_state[f"mlp.{linear_idx[0]}.weight"], head_state[f"mlp.{linear_idx[-1]}.weight"]
    return dict(in_dim=first.shape[1], hidden=first.shape[0], bottleneck=last.shape[0], layers=len(linear_idx),
                use_bn=use_bn, out_dim=out_dim)


def dino_head_from_state(head_state: dict[str, torch.Tensor], source: str = "checkpoint") -> DINOHead:
    """Rebuild a DINOHead with the exact shape of `head_state` and load it (weights unchanged).

    The legacy weight-norm pair `last_layer.weight_g` (K, 1) / `weight_v` (K, d) maps onto torch's
    parametrisation (original0 / original1); a plain `last_layer.weight` gets g = ||row|| so W is unchanged.
    """
    shape = head_shape(head_state, source)
    if "last_layer.weight_v" in head_state:
        v = head_state["last_layer.weight_v"]
        g = head_state.get("last_layer.weight_g", v.norm(dim=1, keepdim=True))
    else:
        v = head_state["last_layer.weight"]
        g = v.norm(dim=1, keepdim=True)
    head = DINOHead(shape["in_dim"], shape["out_dim"], hidden_dim=shape["hidden"] or 1,
                    bottleneck_dim=shape["bottleneck"], num_layers=shape["layers"], use_bn=shape["use_bn"],
                    norm_last_layer=False)
    mapped = {k: t for k, t in head_state.items() if k.startswith("mlp.")}
    mapped["last_layer.parametrizations.weight.original0"] = g.reshape(v.shape[0], 1)
    mapped["last_layer.parametrizations.weight.original1"] = v
    missing, unexpected = head.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise TeacherLoadError(f"{source}: DINO head keys do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return head


def _check_head_against_args(shape: dict[str, Any], args: Any, cfg, source: str) -> None:
    """The head rebuilt from tensors must agree with what the run says it trained (args / teacher.head_*)."""
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
    claims = [
        (getattr(args, "out_dim", None), shape["out_dim"], "args.out_dim"),
        (getattr(args, "use_bn_in_head", None), shape["use_bn"], "args.use_bn_in_head"),
        (cfg.head_hidden_dim, shape["hidden"], "teacher.head_hidden_dim"),
        (cfg.head_bottleneck_dim, shape["bottleneck"], "teacher.head_bottleneck_dim"),
        (cfg.head_num_layers, shape["layers"], "teacher.head_num_layers"),
        (cfg.head_use_bn, shape["use_bn"], "teacher.head_use_bn"),
    ]
    for said, found, where in claims:
        if said is not None and said != found:
            raise TeacherLoadError(
                f"{source}: {where} = {said} but the head tensors give {found}; the file is inconsistent "
                "(re-download it) or the teacher.head_* override is wrong"
            )


@register_teacher("dino")
def build_dino_teacher(cfg) -> Teacher:
    if not cfg.checkpoint:
        raise TeacherLoadError("teacher.kind=dino needs teacher.checkpoint (a DINO .pth: full checkpoint or *_pretrain.pth)")
    obj = load_weights(cfg.checkpoint)
    is_training_ckpt = any(k in obj for k in ("teacher", "student"))
    state = strip_prefix(find_state_dict(obj, "teacher", "state_dict", "model"), "module.")
    if not state:
        raise TeacherLoadError(f"'{cfg.checkpoint}' holds no weight tensors; it is not a DINO checkpoint")
    if any(k.startswith("backbone.") for k in state):
        backbone_state, head_state = split_backbone_head(state)
    elif any(k.startswith("head.") for k in state):
        raise TeacherLoadError(f"'{cfg.checkpoint}' has a DINO head but no backbone.* keys; use the full checkpoint")
    else:  # backbone-only *_pretrain.pth: bare timm/torchvision keys
        backbone_state, head_state = state, {}
    if is_training_ckpt and not head_state:
        raise TeacherLoadError(
            f"'{cfg.checkpoint}' has a backbone but no DINO head (head.*); RoB needs the teacher's prototypes - "
            "use the full checkpoint"
        )
    if head_state and cfg.head_checkpoint:
        raise TeacherLoadError(
            f"'{cfg.checkpoint}' carries its own DINO head; remove teacher.head_checkpoint (or load a backbone-only file)"
        )
    args = obj.get("args")
    arch = cfg.arch or timm_arch_from_dino_args(args) or arch_from_dino_filename(cfg.checkpoint)
    if arch is None:
        raise TeacherLoadError(f"'{cfg.checkpoint}' does not name its architecture; set teacher.arch (e.g. vit_small_patch16_224)")
    backbone = create_timm_backbone(arch, num_classes=0)
    # DINO's backbones have no classifier; torchvision-style `fc.*` leftovers are not part of the embedding.
    backbone_state = {k: v for k, v in backbone_state.items() if not k.startswith(("fc.", "head."))}
    missing, unexpected = load_fitting(backbone, backbone_state, source=f"'{cfg.checkpoint}'", arch=arch)
    if missing or unexpected:
        raise TeacherLoadError(
            f"'{cfg.checkpoint}' does not fit teacher.arch '{arch}' ({len(missing)} missing keys e.g. "
            f"{missing[:1]}, {len(unexpected)} unexpected e.g. {unexpected[:1]}); set teacher.arch to the right model"
        )
    width = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    common = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, patch_size=_patch_size(backbone))
    if not head_state:
        from rob_ray.models.teachers.headless import attach_head

        teacher = attach_head(backbone, cfg, embed_dim=width, name=f"dino:{arch} (backbone only)", **common)
        if cfg.head_checkpoint:
            teacher.name = f"dino:{arch} + head {Path(cfg.head_checkpoint).name}"
        return teacher
    _check_head_against_args(head_shape(head_state, f"'{cfg.checkpoint}'"), args, cfg, f"'{cfg.checkpoint}'")
    head = dino_head_from_state(head_state, f"'{cfg.checkpoint}'")
    if width != head.in_dim:
        raise TeacherLoadError(f"backbone width {width} != head input {head.in_dim} in '{cfg.checkpoint}'")
    return Teacher(backbone, head, num_prototypes=head.out_dim, embed_dim=width, name=f"dino:{arch}", **common)
