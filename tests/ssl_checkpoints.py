"""Write iBOT / MSN checkpoints in their OFFICIAL file layouts from random weights (tests only).

iBOT `checkpoint.pth`: {student, teacher, optimizer, epoch, args (Namespace), ibot_loss}; teacher =
backbone.* + head.mlp.{0,2,4} + head.last_layer.weight_g/_v + head.last_layer2.weight_g/_v.
MSN `*.pth.tar`: {encoder, target_encoder (module.* ViT + fc.fc1/bn1/fc2/bn2/fc3), prototypes, opt, epoch}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from timm.models.vision_transformer import VisionTransformer


def ibot_head_tensors(in_dim: int, hidden: int, bottleneck: int, k: int, gen: torch.Generator,
                      shared: bool = False) -> dict[str, torch.Tensor]:
    t = {}
    for idx, (i, o) in zip((0, 2, 4), [(in_dim, hidden), (hidden, hidden), (hidden, bottleneck)]):
        t[f"mlp.{idx}.weight"] = torch.randn(o, i, generator=gen) * 0.05
        t[f"mlp.{idx}.bias"] = torch.randn(o, generator=gen) * 0.05
    t["last_layer.weight_g"] = 0.5 + torch.rand(k, 1, generator=gen)
    t["last_layer.weight_v"] = torch.randn(k, bottleneck, generator=gen)
    if shared:  # iBOTHead(shared_head=True) registers last_layer twice: both keys, same values
        t["last_layer2.weight_g"] = t["last_layer.weight_g"].clone()
        t["last_layer2.weight_v"] = t["last_layer.weight_v"].clone()
    else:
        t["last_layer2.weight_g"] = 0.5 + torch.rand(k, 1, generator=gen)
        t["last_layer2.weight_v"] = torch.randn(k, bottleneck, generator=gen)
    return t


def write_ibot_checkpoint(path: Path, arch: str = "test_vit", timm_arch: str = "test_vit", k: int = 40,
                          hidden: int = 48, bottleneck: int = 24, seed: int = 0, shared: bool = False,
                          module_prefix: bool = False):
    """Returns (timm backbone in eval mode, head tensors) for an independent forward."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = timm.create_model(timm_arch, num_classes=0, dynamic_img_size=True).eval()
    head = ibot_head_tensors(backbone.num_features, hidden, bottleneck, k, gen, shared)
    pre = "module." if module_prefix else ""
    teacher = {f"{pre}backbone.{n}": v for n, v in backbone.state_dict().items()}
    teacher.update({f"{pre}head.{n}": v for n, v in head.items()})
    student = {f"module.{n.removeprefix(pre)}": torch.zeros_like(v) for n, v in teacher.items()}
    student["module.backbone.masked_embed"] = torch.zeros(1, backbone.num_features)
    args = argparse.Namespace(arch=arch, patch_size=16, out_dim=k, patch_out_dim=k, shared_head=shared,
                              shared_head_teacher=True, norm_in_head=None, act_in_head="gelu",
                              pred_ratio=[0.0, 0.3], pred_ratio_var=[0.0, 0.2])
    torch.save({"student": student, "teacher": teacher, "optimizer": {}, "epoch": 1, "args": args,
                "ibot_loss": {"center": torch.zeros(1, k), "center2": torch.zeros(1, 1, k)}}, path)
    return backbone, head


def msn_fc_tensors(in_dim: int, hidden: int, out: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    t = {}
    for name, (i, o) in {"fc1": (in_dim, hidden), "fc2": (hidden, hidden), "fc3": (hidden, out)}.items():
        t[f"{name}.weight"] = torch.randn(o, i, generator=gen) * 0.1
        t[f"{name}.bias"] = torch.randn(o, generator=gen) * 0.05
    for name in ("bn1", "bn2"):
        t[f"{name}.weight"] = 1 + 0.1 * torch.randn(hidden, generator=gen)
        t[f"{name}.bias"] = 0.1 * torch.randn(hidden, generator=gen)
        t[f"{name}.running_mean"] = 0.1 * torch.randn(hidden, generator=gen)
        t[f"{name}.running_var"] = 1 + 0.1 * torch.rand(hidden, generator=gen)
        t[f"{name}.num_batches_tracked"] = torch.tensor(7)
    return t


def write_msn_checkpoint(path: Path, timm_arch: str | None = None, k: int = 30, hidden: int = 48,
                         out: int = 16, seed: int = 0):
    """Returns (timm backbone in eval mode, fc tensors, prototypes (K, D) raw).

    Default backbone: a ViT-Tiny-width (192, 3 heads) ViT with 2 blocks at 32 px, so the loader has
    to read depth, patch and grid from the tensors."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if timm_arch is None:
        backbone = VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=2, num_heads=3, num_classes=0,
                                     dynamic_img_size=True).eval()
    else:
        backbone = timm.create_model(timm_arch, num_classes=0, dynamic_img_size=True).eval()
    fc = msn_fc_tensors(backbone.num_features, hidden, out, gen)
    target = {f"module.{n}": v for n, v in backbone.state_dict().items()}
    target.update({f"module.fc.{n}": v for n, v in fc.items()})
    prototypes = torch.empty(k, out).uniform_(-out ** -0.5, out ** -0.5, generator=gen)
    torch.save({"encoder": {n: torch.zeros_like(v) for n, v in target.items()}, "opt": {}, "prototypes": prototypes,
                "target_encoder": target, "epoch": 1, "loss": 0.0, "batch_size": 64, "world_size": 1, "lr": 1e-3,
                "temperature": 0.1}, path)
    return backbone, fc, prototypes
