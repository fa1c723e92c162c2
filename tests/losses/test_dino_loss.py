"""RoB-DINO loss against an independent float64 reference written with explicit loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rob_ray.losses import DinoLoss, view_pairs


def reference_loss(student, teacher, g, v, batch, ts, tt, pairing, center=None):
    """Explicit per-pair, per-sample cross-entropy in float64 with a hand-written log-softmax."""
    s = student.double().view(v, batch, -1)
    t = teacher.double().view(g, batch, -1)
    if center is not None:
        t = t - center.double()
    total, count = 0.0, 0
    for i in range(g):
        for j in range(v):
            if pairing == "swapped" and i == j:
                continue
            if pairing == "same_view" and j < g and j != i:
                continue
            pair = 0.0
            for b in range(batch):
                tz = [x / tt for x in t[i, b].tolist()]
                tmax = max(tz)
                te = [math.exp(x - tmax) for x in tz]
                p = [x / sum(te) for x in te]
                sz = [x / ts for x in s[j, b].tolist()]
                smax = max(sz)
                lse = smax + math.log(sum(math.exp(x - smax) for x in sz))
                pair += -sum(pk * (sk - lse) for pk, sk in zip(p, sz))
            total += pair / batch
            count += 1
    return total / count


@pytest.mark.parametrize("pairing, g, locals_, batch, k, ts, tt", [
    (p, g, nl, b, k, ts, tt)
    for (p, g, nl, b, k, ts, tt) in itertools.product(["same_view", "swapped"], [1, 2], [0, 3], [1, 4], [7],
                                                       [0.1], [0.04, 1.0])
    if not (p == "swapped" and g == 1 and nl == 0)
])
def test_matches_reference_no_centering(pairing, g, locals_, batch, k, ts, tt):
    torch.manual_seed(0)
    v = g + locals_
    student = torch.randn(v * batch, k) * 3
    teacher = torch.randn(g * batch, k) * 3
    loss = DinoLoss(k, teacher_temp=tt, student_temp=ts, pairing=pairing)
    out = loss(student, teacher, num_teacher_views=g, num_global=g)
    assert out["loss"].item() == pytest.approx(reference_loss(student, teacher, g, v, batch, ts, tt, pairing), rel=1e-5)


@pytest.mark.parametrize("pairing", ["same_view", "swapped"])
def test_matches_reference_with_ema_centering(pairing):
    torch.manual_seed(1)
    g, v, batch, k, m = 2, 5, 3, 6, 0.9
    loss = DinoLoss(k, teacher_temp=0.07, student_temp=0.1, centering="ema", center_momentum=m, pairing=pairing)
    center = torch.zeros(1, k)
    for _ in range(3):  # the centre moves between calls: check loss and centre each time
        student, teacher = torch.randn(v * batch, k), torch.randn(g * batch, k)
        out = loss(student, teacher, num_teacher_views=g, num_global=g)
        expected = reference_loss(student, teacher, g, v, batch, 0.1, 0.07, pairing, center=center)
        assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
        center = center * m + teacher.mean(0, keepdim=True) * (1 - m)
        torch.testing.assert_close(loss.center, center)


def test_no_centering_leaves_center_untouched_and_pairs_are_robs():
    loss = DinoLoss(4)
    loss(torch.randn(8, 4), torch.randn(4, 4), num_teacher_views=2, num_global=2)
    assert torch.count_nonzero(loss.center) == 0
    assert view_pairs(2, 4, 2, "same_view") == [(0, 0), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert view_pairs(2, 3, 2, "swapped") == [(0, 1), (0, 2), (1, 0), (1, 2)]


def test_gradient_flows_to_student_only():
    student = torch.randn(6, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    DinoLoss(5)(student, teacher, num_teacher_views=2, num_global=2)["loss"].backward()
    assert student.grad is not None and torch.count_nonzero(student.grad) > 0
    assert teacher.grad is None


def test_shape_errors_are_explicit():
    loss = DinoLoss(5)
    with pytest.raises(ValueError, match="not a multiple of 2 views"):
        loss(torch.randn(6, 5), torch.randn(3, 5), num_teacher_views=2, num_global=2)
    with pytest.raises(ValueError, match="student head has 4 outputs but the teacher has 5 prototypes"):
        loss(torch.randn(4, 4), torch.randn(4, 5), num_teacher_views=2, num_global=2)
    with pytest.raises(ValueError, match="no view pair"):
        DinoLoss(5, pairing="swapped")(torch.randn(2, 5), torch.randn(2, 5), num_teacher_views=1, num_global=1)


@pytest.mark.parametrize("pairing, g, locals_, iters", [("same_view", 2, 2, 3), ("swapped", 2, 0, 1), ("same_view", 1, 3, 5)])
def test_sinkhorn_teacher_matches_reference(pairing, g, locals_, iters):
    """teacher_norm=sinkhorn: targets are Sinkhorn-Knopp codes of all G*B teacher rows (eps = tau_t)."""
    from tests.losses import reference as ref

    batch, k, tt, ts = 3, 5, 0.5, 0.1
    gen = torch.Generator().manual_seed(7)
    v = g + locals_
    student, teacher = torch.randn(v * batch, k, generator=gen), torch.randn(g * batch, k, generator=gen)
    loss = DinoLoss(k, teacher_temp=tt, student_temp=ts, pairing=pairing, teacher_norm="sinkhorn",
                    sinkhorn_iterations=iters)
    out = loss(student, teacher, num_teacher_views=g, num_global=g)
    codes = ref.sinkhorn(ref.rows(teacher), tt, iters)
    s_rows = ref.rows(student)
    pair_list = ref.pairs(g, v, g, pairing)
    expected = sum(sum(ref.cross_entropy(codes[i * batch + b], s_rows[j * batch + b], ts) for b in range(batch)) / batch
                   for i, j in pair_list) / len(pair_list)
    assert abs(float(out["loss"]) - expected) < 1e-5
    torch.testing.assert_close(out["teacher_probs"].double(), torch.tensor(codes, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    # balanced: over the batch each prototype gets (close to) 1/K of the target mass
    usage = out["teacher_probs"].mean(0)
    softmax_usage = torch.softmax(teacher / tt, 1).mean(0)
    assert (usage - 1 / k).abs().max() < (softmax_usage - 1 / k).abs().max()


def test_sinkhorn_with_centering_is_refused():
    with pytest.raises(ValueError, match="balances the targets itself"):
        DinoLoss(4, centering="ema", teacher_norm="sinkhorn")
    with pytest.raises(ValueError, match="teacher_norm must be"):
        DinoLoss(4, teacher_norm="bogus")
