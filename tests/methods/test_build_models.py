"""build_models: the student's initial weights depend on the seed alone, not on whether the
teacher was built in the same call (the k-NN report's "untrained" row reuses a built teacher)."""

from __future__ import annotations

import torch

from rob_ray.config import load_config
from rob_ray.methods import build_models

TINY = ["student.arch=test_resnet", "student.head.hidden_dim=32", "student.head.bottleneck_dim=8"]


def test_student_init_is_the_same_with_a_reused_teacher():
    cfg = load_config(None, TINY)  # default teacher: the offline EfficientNet-Lite0 (random init, then weights)
    torch.manual_seed(0)
    teacher, built_together = build_models(cfg)
    torch.manual_seed(0)
    _, built_after = build_models(cfg, teacher)
    a, b = built_together.state_dict(), built_after.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    torch.manual_seed(1)
    other = build_models(cfg, teacher)[1].state_dict()
    assert any(not torch.equal(a[k], other[k]) for k in a if a[k].is_floating_point())  # the seed does matter
