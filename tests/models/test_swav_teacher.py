"""SwAV teachers: the official checkpoint layout (module. prefix, torchvision ResNet keys,
projection_head.{0,1,3}, prototypes.weight) loads and matches an independent forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from rob_ray.config import TeacherConfig
from rob_ray.models import TeacherLoadError, build_teacher


def _head_tensors(in_dim, hidden, dim, k, gen):
    return {
        "projection_head.0.weight": torch.randn(hidden, in_dim, generator=gen) * 0.02,
        "projection_head.0.bias": torch.randn(hidden, generator=gen) * 0.02,
        "projection_head.1.weight": 1 + 0.1 * torch.randn(hidden, generator=gen),
        "projection_head.1.bias": 0.1 * torch.randn(hidden, generator=gen),
        "projection_head.1.running_mean": 0.1 * torch.randn(hidden, generator=gen),
        "projection_head.1.running_var": 1 + 0.1 * torch.rand(hidden, generator=gen),
        "projection_head.1.num_batches_tracked": torch.tensor(5),
        "projection_head.3.weight": torch.randn(dim, hidden, generator=gen) * 0.05,
        "projection_head.3.bias": torch.randn(dim, generator=gen) * 0.05,
        "prototypes.weight": torch.randn(k, dim, generator=gen),  # not unit rows: the last step moved them
    }


def _reference_scores(feats, t):
    """Linear -> BN (eval) -> ReLU -> Linear, L2-normalise; prototypes renormalised as SwAV does each step."""
    x = feats @ t["projection_head.0.weight"].T + t["projection_head.0.bias"]
    x = (x - t["projection_head.1.running_mean"]) / torch.sqrt(t["projection_head.1.running_var"] + 1e-5)
    x = torch.relu(x * t["projection_head.1.weight"] + t["projection_head.1.bias"])
    x = x @ t["projection_head.3.weight"].T + t["projection_head.3.bias"]
    z = x / x.norm(dim=1, keepdim=True)
    protos = t["prototypes.weight"] / t["prototypes.weight"].norm(dim=1, keepdim=True)
    return z @ protos.T, z


def test_official_rn50_layout_matches_independent_forward(tmp_path):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = torchvision.models.resnet50().eval()
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN is really exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    head = _head_tensors(2048, 2048, 128, 3000, gen)
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    state.update({f"module.{k}": v for k, v in head.items()})
    path = tmp_path / "swav_800ep_pretrain.pth.tar"
    torch.save(state, path)

    teacher = build_teacher(TeacherConfig(kind="swav", checkpoint=str(path)))
    assert teacher.num_prototypes == 3000 and teacher.embed_dim == 2048 and teacher.prototypes.shape == (3000, 128)
    assert teacher.std == (0.228, 0.224, 0.225)
    x = torch.randn(2, 3, 64, 64)
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        want, z = _reference_scores(net(x), head)
    torch.testing.assert_close(teacher(x), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(teacher.project(x), z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(teacher.project(x) @ teacher.prototypes.T, teacher(x))
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def _swav_trunk_shapes(widen: int, layers: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Conv shapes straight from SwAV's resnet50.py rules: stem 64w, stage planes 64w*2^i, width planes*w."""
    shapes = {"conv1.weight": (64 * widen, 3, 7, 7)}
    inplanes = 64 * widen
    for i, blocks in enumerate(layers):
        planes = 64 * widen * 2**i
        width = planes * widen
        for b in range(blocks):
            p = f"layer{i + 1}.{b}"
            shapes[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            shapes[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
            inplanes = planes * 4
    return shapes


@pytest.mark.parametrize("widen", [2, 4])
def test_widened_trunk_follows_swav_widths(widen):
    from rob_ray.models.teachers.swav import SwavResNet

    layers = (3, 4, 6, 3)
    with torch.device("meta"):  # RN50-w2/w4 shapes without allocating their weights
        trunk = SwavResNet(layers, widen)
    got = {k: tuple(v.shape) for k, v in trunk.state_dict().items() if "conv" in k or "downsample.0" in k}
    assert got == _swav_trunk_shapes(widen, layers)
    assert trunk.num_features == 2048 * widen


def test_backbone_only_file_is_refused(tmp_path):
    state = {f"module.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    with pytest.raises(TeacherLoadError, match=r"no prototypes\.weight"):
        build_teacher(TeacherConfig(kind="swav", checkpoint=str(path)))
    with pytest.raises(TeacherLoadError, match=r"needs teacher\.checkpoint"):
        build_teacher(TeacherConfig(kind="swav"))


def test_unit_prototypes_give_cosine_scores():
    from rob_ray.models.swav_head import SwavHead

    head = SwavHead(8, 4, 0, frozen_prototypes=torch.randn(5, 4) * 3).eval()
    scores = head(torch.randn(3, 8))
    assert scores.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(F.normalize(head.frozen_prototypes, dim=1), head.frozen_prototypes)
