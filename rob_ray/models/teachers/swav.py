"""SwAV checkpoints (Caron et al. 2020, facebookresearch/swav) as RoB teachers.

Official layout (`swav_800ep_pretrain.pth.tar`, `swav_RN50w2_400ep_pretrain.pth.tar`, ...): a flat
state_dict (or `{"state_dict": ...}` training checkpoint) whose keys carry DDP's `module.` prefix:
torchvision-ResNet backbone keys (`conv1`, `bn1`, `layerX.Y.{conv,bn}N`, `downsample.{0,1}`),
`projection_head.{0,1,3}` (Linear, BatchNorm1d, ReLU, Linear) and `prototypes.weight` (3000, 128).

src/resnet50.py widens *every* channel count by w (stem 64w, stage planes 64w * 2^i, bottleneck
base width 64w), so RN50-w2/w4 are not torchvision's wide_resnet50_2; we rebuild that network from
torchvision's Bottleneck block, reading w, the depth and the head widths (RN50 2048, w2 4096,
w4 8192 hidden; 128-d; 3000 prototypes) from the tensors. SwAV pads 1 then convolves with padding 2,
the same as torchvision's padding 3. Prototypes are L2-normalised on load, as SwAV re-normalises
them before every training step.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from rob_ray.models.swav_head import SwavHead
from rob_ray.models.teachers.base import IMAGENET_MEAN, Teacher, TeacherLoadError
from rob_ray.models.teachers.checkpoint_io import find_state_dict, load_fitting, load_weights, strip_prefix
from rob_ray.models.teachers.registry import register_teacher

__all__ = ["SWAV_STD", "SwavResNet", "SwavTeacher", "build_swav_teacher", "split_swav_state"]

# src/multicropdataset.py normalises with std 0.228 (not 0.229) on the red channel.
SWAV_STD = (0.228, 0.224, 0.225)


class SwavResNet(nn.Module):
    """SwAV's ResNet trunk (Bottleneck blocks, every width times `widen`): (N, 3, S, S) -> (N, 2048 * widen)."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), widen: int = 1) -> None:
        super().__init__()
        width = 64 * widen
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * Bottleneck.expansion:
                downsample = nn.Sequential(nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes * Bottleneck.expansion))
            stage = [Bottleneck(inplanes, planes, stride, downsample, base_width=width)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes, base_width=width) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.num_layers = len(layers)
        self.num_features = inplanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
        return x.mean(dim=(2, 3))


class SwavTeacher(Teacher):
    """Teacher whose head is a SwAV projection head + frozen prototypes.

    `prototypes`: (K, D) unit rows; `project(x)`: (N, 3, S, S) -> (N, D) unit embeddings;
    `forward(x)` = project(x) @ prototypes^T (N, K), before any temperature.
    """

    @property
    def prototypes(self) -> torch.Tensor:
        return self.head.frozen_prototypes

    @torch.no_grad()
    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.project(self.backbone(x))


def split_swav_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(backbone, head) state dicts from an official SwAV state_dict (prefix already stripped)."""
    head = {k: v for k, v in state.items() if k.startswith(("projection_head.", "prototypes."))}
    backbone = {k: v for k, v in state.items() if k not in head and not k.startswith("fc.")}
    return backbone, head


def _layers(backbone: dict[str, torch.Tensor], source: str) -> tuple[int, ...]:
    counts: dict[int, int] = {}
    for k in backbone:
        if m := re.match(r"layer(\d+)\.(\d+)\.conv3\.weight$", k):
            counts[int(m.group(1))] = max(counts.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    if not counts or sorted(counts) != list(range(1, len(counts) + 1)):
        raise TeacherLoadError(f"{source} has no ResNet Bottleneck stages (layerN.M.conv3); it is not a SwAV ResNet")
    return tuple(counts[i] for i in sorted(counts))


@register_teacher("swav")
def build_swav_teacher(cfg) -> SwavTeacher:
    if not cfg.checkpoint:
        raise TeacherLoadError("teacher.kind=swav needs teacher.checkpoint (e.g. swav_800ep_pretrain.pth.tar)")
    source = f"'{cfg.checkpoint}'"
    state = strip_prefix(find_state_dict(load_weights(cfg.checkpoint), "state_dict", "model"), "module.")
    backbone_state, head_state = split_swav_state(state)
    if any(k.startswith("prototypes.prototypes") for k in head_state):
        raise TeacherLoadError(f"{source} has several prototype sets (MultiPrototypes); rob_ray supports one")
    if "prototypes.weight" not in head_state:
        raise TeacherLoadError(
            f"{source} has no prototypes.weight: RoB needs the SwAV pretraining checkpoint with its projection head "
            "and prototypes (e.g. swav_800ep_pretrain.pth.tar), not a backbone-only or linear-eval file"
        )
    if "conv1.weight" not in backbone_state:
        raise TeacherLoadError(f"{source} has no conv1.weight; it is not a SwAV ResNet checkpoint")
    widen, rem = divmod(int(backbone_state["conv1.weight"].shape[0]), 64)
    if rem or widen < 1:
        raise TeacherLoadError(f"{source}: stem width {backbone_state['conv1.weight'].shape[0]} is not 64 * w")
    backbone = SwavResNet(_layers(backbone_state, source), widen)
    missing, unexpected = load_fitting(backbone, backbone_state, source=source, arch=f"SwAV ResNet-50 w{widen}")
    if missing or unexpected:
        raise TeacherLoadError(f"{source}: ResNet keys do not match SwAV's layout (missing {missing[:2]}, "
                               f"unexpected {unexpected[:2]})")
    protos = head_state["prototypes.weight"]
    if "projection_head.0.weight" in head_state and "projection_head.3.weight" in head_state:
        hidden, in_dim = head_state["projection_head.0.weight"].shape
    elif "projection_head.weight" in head_state:
        hidden, in_dim = 0, head_state["projection_head.weight"].shape[1]
    else:
        raise TeacherLoadError(f"{source} has no projection_head weights; use the full pretraining checkpoint")
    if in_dim != backbone.num_features:
        raise TeacherLoadError(f"{source}: projection head expects {in_dim} features, the ResNet gives {backbone.num_features}")
    head = SwavHead(int(in_dim), int(protos.shape[1]), int(hidden), frozen_prototypes=protos)
    head_weights = {k: v for k, v in head_state.items() if k.startswith("projection_head.")}
    missing, unexpected = load_fitting(head, head_weights, source=source, arch="SwAV projection head")
    missing = [k for k in missing if k != "frozen_prototypes"]
    if missing or unexpected:
        raise TeacherLoadError(f"{source}: projection head keys do not match (missing {missing[:2]}, unexpected {unexpected[:2]})")
    name = "swav:resnet50" + (f"w{widen}" if widen > 1 else "")
    return SwavTeacher(backbone, head, num_prototypes=head.num_prototypes, embed_dim=backbone.num_features,
                       mean=IMAGENET_MEAN, std=SWAV_STD, name=name)
