"""Student contract, from the timm registry: forward/backward, gradients, feature widths."""

from __future__ import annotations

import pytest
import torch

from rob_ray.config import StudentConfig
from rob_ray.models import StudentBuildError, build_student, feature_width

STUDENTS = ["test_resnet", "test_efficientnet", "test_vit", "resnet18", "mobilenetv3_small_100"]


@pytest.mark.parametrize("arch", STUDENTS)
def test_every_student_parameter_gets_a_gradient(arch):
    torch.manual_seed(0)
    cfg = StudentConfig(arch=arch, head={"hidden_dim": 32, "bottleneck_dim": 16})
    student = build_student(cfg, out_dim=11)
    out = student([torch.randn(4, 3, 64, 64), torch.randn(6, 3, 32, 32)])
    assert out.shape == (10, 11)
    out.logsumexp(-1).sum().backward()
    # Connected to the loss (timm zero-inits each residual block's last BN gain, so some
    # gradients are exactly zero at step 0 - present, but zero).
    missing = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None) > 0


def test_mobilenetv3_feature_width_is_chosen_deliberately():
    cfg = StudentConfig(arch="mobilenetv3_large_100", head={"hidden_dim": 32, "bottleneck_dim": 16})
    pre = build_student(cfg, out_dim=5)
    pooled = build_student(cfg.model_copy(update={"feature": "pooled"}), out_dim=5)
    assert feature_width(pre.backbone, "pre_logits") == 1280 and pre.head.in_dim == 1280
    assert feature_width(pooled.backbone, "pooled") == 960 and pooled.head.in_dim == 960
    x = torch.randn(2, 3, 64, 64)
    assert pre.embed(x).shape == (2, 1280) and pooled.embed(x).shape == (2, 960)


def test_head_prototypes_are_unit_norm_and_gain_frozen():
    student = build_student(StudentConfig(arch="test_resnet", head={"hidden_dim": 32, "bottleneck_dim": 16}), 7)
    w = student.head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(7))
    assert not student.head.last_layer.parametrizations.weight.original0.requires_grad


def test_unknown_student_names_similar_models():
    with pytest.raises(StudentBuildError, match=r"not a timm model; similar names: .*resnet"):
        build_student(StudentConfig(arch="resnet_tiny_xyz"), out_dim=4)
