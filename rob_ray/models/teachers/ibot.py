"""iBOT checkpoints (Zhou et al. 2021, github.com/bytedance/ibot) as RoB teachers.

Accepted layout: the full training checkpoint `checkpoint.pth` = {student, teacher, optimizer,
epoch, args, ibot_loss}; its *teacher* entry holds `backbone.*` (a DeiT-style ViT, timm names) and
the iBOTHead `head.mlp.*` + `head.last_layer.weight_g/_v` (+ `head.last_layer2.*`, the patch
prototypes; with `shared_head` it repeats `last_layer`), possibly `module.`-prefixed. The
backbone-only `checkpoint_teacher.pth` ({state_dict: backbone}) has no head and is refused.

Teacher contract extensions: `has_patch_head = True`; `forward_with_patches(x)` -> (CLS scores
(N, K), patch scores (N, P, K2)) before any temperature, as iBOTHead.forward on all tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from rob_ray.models.heads import DINOHead
from rob_ray.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import find_state_dict, load_weights
from rob_ray.models.teachers.dino import dino_head_from_state, split_backbone_head, timm_arch_from_dino_args
from rob_ray.models.teachers.registry import register_teacher
from rob_ray.models.teachers.timm_teacher import _patch_size
from rob_ray.models.teachers.vit_state import load_vit_backbone

__all__ = ["IbotHead", "IbotTeacher", "build_ibot_teacher"]


def _weight_normed(g: torch.Tensor, v: torch.Tensor) -> nn.Module:
    layer = weight_norm(nn.Linear(v.shape[1], v.shape[0], bias=False))
    layer.load_state_dict({"parametrizations.weight.original0": g.reshape(v.shape[0], 1),
                           "parametrizations.weight.original1": v})
    return layer


class IbotHead(nn.Module):
    """iBOTHead: a DINO head for the class token; patch tokens share its MLP and use `patch_layer`
    (the checkpoint's `last_layer2`, or `last_layer` itself for a shared head).

    Forward: (N, D) class embeddings -> (N, K). `forward_tokens`: (N, 1 + P, D) -> ((N, K), (N, P, K2)).
    """

    def __init__(self, head: DINOHead, patch_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.head = head
        self.patch_layer = patch_layer  # None = shared with head.last_layer
        self.in_dim, self.out_dim = head.in_dim, head.out_dim
        self.patch_out_dim = head.out_dim if patch_layer is None else patch_layer.weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, d = tokens.shape
        # The MLP runs on every token (BN, if any, in eval mode: per token), then L2 normalisation.
        z = F.normalize(self.head.mlp(tokens.reshape(n * t, d)), dim=-1, p=2, eps=1e-6).reshape(n, t, -1)
        cls = self.head.last_layer(z[:, 0])
        patch_layer = self.patch_layer if self.patch_layer is not None else self.head.last_layer
        return cls, patch_layer(z[:, 1:])


class IbotTeacher(Teacher):
    """A frozen ViT + iBOT head; `forward(x)` gives the CLS scores (N, K)."""

    has_patch_head = True

    @torch.no_grad()
    def forward_with_patches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, S, S) -> (CLS scores (N, K), patch scores (N, P, K2)), P = (S / patch)^2."""
        tokens = self.backbone.forward_features(x)
        prefix = self.backbone.num_prefix_tokens
        tokens = torch.cat([tokens[:, :1], tokens[:, prefix:]], dim=1)  # class token + patches only
        return self.head.forward_tokens(tokens)


def _check_head_args(args: Any, source: str) -> None:
    norm = getattr(args, "norm_in_head", None)
    act = getattr(args, "act_in_head", "gelu")
    if norm not in (None, "bn", "syncbn") or act != "gelu":
        raise TeacherLoadError(
            f"{source}: iBOT head with norm_in_head={norm!r}, act_in_head={act!r} is not supported "
            "(rob_ray loads the published heads: no norm or BN, GELU)"
        )
    if str(getattr(args, "arch", "vit")).startswith("swin"):
        raise TeacherLoadError(f"{source}: Swin iBOT teachers are not supported; use a ViT checkpoint")


@register_teacher("ibot")
def build_ibot_teacher(cfg) -> IbotTeacher:
    if not cfg.checkpoint:
        raise TeacherLoadError("teacher.kind=ibot needs teacher.checkpoint (iBOT's full checkpoint.pth)")
    source = f"'{cfg.checkpoint}'"
    obj = load_weights(cfg.checkpoint)
    args = obj.get("args")
    state = find_state_dict(obj, "teacher", "state_dict", "model")
    backbone_state, head_state = split_backbone_head(state)
    if not head_state:
        raise TeacherLoadError(
            f"{source} has no iBOT head (no head.* keys; checkpoint_teacher.pth holds only the backbone); RoB needs "
            "the teacher's prototypes - use the full checkpoint.pth"
        )
    if not backbone_state:
        raise TeacherLoadError(f"{source} has a head but no backbone.* keys: it is not an iBOT checkpoint")
    _check_head_args(args, source)
    arch = cfg.arch or timm_arch_from_dino_args(args)
    backbone = load_vit_backbone(backbone_state, arch, source)
    head = dino_head_from_state({k: v for k, v in head_state.items() if not k.startswith("last_layer2.")}, source)
    patch_layer = None
    if "last_layer2.weight_v" in head_state:
        v = head_state["last_layer2.weight_v"]
        patch_layer = _weight_normed(head_state.get("last_layer2.weight_g", v.norm(dim=1, keepdim=True)), v)
    elif "last_layer2.weight" in head_state:
        v = head_state["last_layer2.weight"]
        patch_layer = _weight_normed(v.norm(dim=1, keepdim=True), v)
    if patch_layer is not None and patch_layer.weight.shape[1] != head.last_layer.weight.shape[1]:
        raise TeacherLoadError(f"{source}: head.last_layer2 input width does not match the head bottleneck")
    width = int(backbone.num_features)
    if width != head.in_dim:
        raise TeacherLoadError(f"backbone width {width} != head input {head.in_dim} in {source}")
    ibot_head = IbotHead(head, patch_layer)
    return IbotTeacher(backbone, ibot_head, num_prototypes=head.out_dim, embed_dim=width, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, name=f"ibot:{arch or 'vit'}", patch_size=_patch_size(backbone))
