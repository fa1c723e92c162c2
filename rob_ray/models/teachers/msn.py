"""MSN checkpoints (Assran et al. 2022, github.com/facebookresearch/msn) as RoB teachers.

Accepted layout: the training checkpoint `*.pth.tar` = {encoder, target_encoder, prototypes, opt,
epoch, ...}. The *target encoder* (MSN's EMA teacher) is used: `module.`-prefixed DeiT-style ViT
keys (timm names) + the projector `fc.fc1/bn1/fc2/bn2/fc3` (GELU between); `prototypes` is the
(K, D) matrix (1024 x 256 in the released models). A plain {`fc.*`, ViT keys, `prototypes`} dict
also loads. MSN scores = cos(projector output, prototypes) (src/losses.py `snn`).

Teacher contract extensions: `prototypes` (K, D) frozen buffer with L2-normalised rows;
`project(x)` -> (N, D) L2-normalised projector output; `teacher(x)` -> (N, K) cosine scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rob_ray.models.projectors import MSNProjector
from rob_ray.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import find_state_dict, load_weights, strip_prefix
from rob_ray.models.teachers.registry import register_teacher
from rob_ray.models.teachers.timm_teacher import _patch_size
from rob_ray.models.teachers.vit_state import load_vit_backbone

__all__ = ["MsnHead", "MsnTeacher", "build_msn_teacher", "msn_projector_from_state"]


class MsnHead(nn.Module):
    """Projector + frozen prototypes. Forward: (N, D_backbone) -> (N, K) cosine similarities."""

    def __init__(self, projector: MSNProjector, prototypes: torch.Tensor) -> None:
        super().__init__()
        self.projector = projector
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=1))

    def project(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(h), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.project(h) @ self.prototypes.T


class MsnTeacher(Teacher):
    """A frozen MSN target encoder (ViT + projector) and its prototypes."""

    @property
    def prototypes(self) -> torch.Tensor:
        """(K, D) prototypes, rows L2-normalised."""
        return self.head.prototypes

    @torch.no_grad()
    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, D) L2-normalised projector output."""
        return self.head.project(self.backbone(x))


def msn_projector_from_state(fc_state: dict[str, torch.Tensor], source: str) -> MSNProjector:
    """Rebuild MSN's projector with the exact shapes of `fc_state` (keys fc1.*, bn1.*, ...)."""
    if "fc1.weight" not in fc_state or "fc3.weight" not in fc_state:
        raise TeacherLoadError(f"{source} has no MSN projector (fc.fc1 ... fc.fc3 keys); use the full .pth.tar checkpoint")
    hidden, in_dim = fc_state["fc1.weight"].shape
    out_dim = fc_state["fc3.weight"].shape[0]
    projector = MSNProjector(in_dim, hidden_dim=hidden, out_dim=out_dim, use_bn="bn1.weight" in fc_state)
    missing, unexpected = projector.load_state_dict(fc_state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise TeacherLoadError(f"{source}: MSN projector keys do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return projector


@register_teacher("msn")
def build_msn_teacher(cfg) -> MsnTeacher:
    if not cfg.checkpoint:
        raise TeacherLoadError("teacher.kind=msn needs teacher.checkpoint (an MSN .pth.tar with target_encoder and prototypes)")
    source = f"'{cfg.checkpoint}'"
    obj = load_weights(cfg.checkpoint)
    prototypes = obj.get("prototypes")
    if not isinstance(prototypes, torch.Tensor) or prototypes.ndim != 2:
        raise TeacherLoadError(f"{source} has no 'prototypes' (K, D) tensor; RoB-MSN needs the MSN training checkpoint")
    state = strip_prefix(find_state_dict(obj, "target_encoder", "encoder", "state_dict"), "module.")
    state = {k: v for k, v in state.items() if k != "prototypes"}
    fc_state = {k[len("fc."):]: v for k, v in state.items() if k.startswith("fc.")}
    backbone_state = {k: v for k, v in state.items() if not k.startswith(("fc.", "pred."))}
    projector = msn_projector_from_state(fc_state, source)
    if projector.out_dim != prototypes.shape[1]:
        raise TeacherLoadError(
            f"{source}: projector output {projector.out_dim} != prototype width {prototypes.shape[1]}"
        )
    backbone = load_vit_backbone(backbone_state, cfg.arch, source)
    width = int(backbone.num_features)
    if width != projector.in_dim:
        raise TeacherLoadError(f"backbone width {width} != projector input {projector.in_dim} in {source}")
    return MsnTeacher(backbone, MsnHead(projector, prototypes), num_prototypes=prototypes.shape[0], embed_dim=width,
                      mean=IMAGENET_MEAN, std=IMAGENET_STD, name=f"msn:{cfg.arch or 'vit'}",
                      patch_size=_patch_size(backbone))
