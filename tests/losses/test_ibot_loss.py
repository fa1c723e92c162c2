"""RoB-iBOT loss against an independent float64 reference written with explicit loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rob_ray.losses import IbotLoss


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def _log_softmax(xs):
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def _ce(t, s, tt, ts):
    p, logq = _softmax([x / tt for x in t]), _log_softmax([x / ts for x in s])
    return -sum(a * b for a, b in zip(p, logq))


def reference(s_cls, s_patch, t_cls, t_patch, masks, g, v, batch, tt, tpt, ts, l1, l2, pairing):
    s_cls, t_cls = s_cls.double().view(v, batch, -1), t_cls.double().view(g, batch, -1)
    s_patch, t_patch = s_patch.double().view(g, batch, *s_patch.shape[1:]), t_patch.double().view(g, batch, *t_patch.shape[1:])
    masks = masks.view(g, batch, -1)
    cls_total, cls_pairs = 0.0, 0
    for i in range(g):
        for j in range(v):
            keep = (j != i) if pairing == "swapped" else (j == i or j >= g)
            if not keep:
                continue
            cls_total += sum(_ce(t_cls[i, b].tolist(), s_cls[j, b].tolist(), tt, ts) for b in range(batch)) / batch
            cls_pairs += 1
    patch_total = 0.0
    for i in range(g):  # the patch term only pairs a global view with itself
        per_image = 0.0
        for b in range(batch):
            n = int(masks[i, b].sum())
            acc = sum(_ce(t_patch[i, b, p].tolist(), s_patch[i, b, p].tolist(), tpt, ts)
                      for p in range(masks.shape[-1]) if masks[i, b, p])
            per_image += acc / max(n, 1)
        patch_total += per_image / batch
    return l1 * cls_total / cls_pairs + l2 * patch_total / g


@pytest.mark.parametrize("pairing, g, locals_", [
    (p, g, nl) for p, g, nl in itertools.product(["same_view", "swapped"], [1, 2], [0, 2])
    if not (p == "swapped" and g == 1 and nl == 0)
])
def test_matches_reference(pairing, g, locals_):
    torch.manual_seed(g * 10 + locals_)
    batch, patches, k = 3, 5, 6
    v = g + locals_
    s_cls, t_cls = torch.randn(v * batch, k) * 3, torch.randn(g * batch, k) * 3
    s_patch, t_patch = torch.randn(g * batch, patches, k) * 3, torch.randn(g * batch, patches, k) * 3
    masks = torch.rand(g * batch, patches) < 0.5
    masks[0] = False  # an image with no masked patch contributes 0 (denominator clamped to 1)
    loss = IbotLoss(teacher_temp=0.07, teacher_patch_temp=0.05, student_temp=0.1, lambda1=0.7, lambda2=1.3,
                    pairing=pairing)
    expected = reference(s_cls, s_patch, t_cls, t_patch, masks, g, v, batch, 0.07, 0.05, 0.1, 0.7, 1.3, pairing)
    out = loss(s_cls, s_patch, t_cls, t_patch, masks, num_teacher_views=g, num_global=g)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    # The student may send only its masked patch rows (what the method does): same value.
    packed = loss(s_cls, s_patch[masks], t_cls, t_patch, masks.view(g * batch, 1, patches), num_teacher_views=g, num_global=g)
    assert packed["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert (out["cls"] + out["patch"]).item() == pytest.approx(expected, rel=1e-5)


def test_each_term_alone_and_gradients():
    torch.manual_seed(0)
    s_cls = torch.randn(8, 4, requires_grad=True)
    s_patch = torch.randn(4, 3, 4, requires_grad=True)
    t_cls, t_patch = torch.randn(4, 4, requires_grad=True), torch.randn(4, 3, 4)
    masks = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    only_cls = IbotLoss(lambda2=0.0)(s_cls, None, t_cls, None, None, num_teacher_views=2, num_global=2)
    assert only_cls["patch"].item() == 0 and only_cls["loss"].item() == pytest.approx(only_cls["cls"].item())
    out = IbotLoss()(s_cls, s_patch, t_cls, t_patch, masks, num_teacher_views=2, num_global=2)
    out["loss"].backward()
    assert t_cls.grad is None
    assert torch.count_nonzero(s_patch.grad[1]) == 0 and torch.count_nonzero(s_patch.grad[0, 1:]) == 0  # visible patches
    assert torch.count_nonzero(s_patch.grad[2]) > 0


def test_errors_are_explicit():
    with pytest.raises(ValueError, match="not both 0"):
        IbotLoss(lambda1=0.0, lambda2=0.0)
    with pytest.raises(ValueError, match="needs student_patch"):
        IbotLoss()(torch.randn(4, 3), None, torch.randn(4, 3), None, None, num_teacher_views=2, num_global=2)
    with pytest.raises(ValueError, match="5 outputs but the teacher has 3"):
        IbotLoss()(torch.randn(4, 5), None, torch.randn(4, 3), None, None, num_teacher_views=2, num_global=2)
