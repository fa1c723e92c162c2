"""RoB-MSN loss against an independent float64 reference (explicit loops), with and without
Sinkhorn targets and ME-MAX; MSN's own parametrisation (tau 0.1 sharpened by T 0.25) agrees."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rob_ray.losses import MsnLoss, msn_sinkhorn


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def _sinkhorn_loops(rows, iters):
    """Alternate prototype / sample normalisation on a list-of-lists (N x K), as in MSN's paper."""
    n, k = len(rows), len(rows[0])
    q = [[x / sum(map(sum, rows)) for x in r] for r in rows]
    for _ in range(iters):
        col = [sum(q[i][j] for i in range(n)) for j in range(k)]
        q = [[q[i][j] / col[j] / k for j in range(k)] for i in range(n)]
        q = [[x / sum(r) / n for x in r] for r in q]
    return [[x * n for x in r] for r in q]


def reference(s, t, g, v, batch, tt, ts, pairing, sinkhorn, me_max, w):
    s, t = s.double().tolist(), t.double().tolist()
    targets = [_softmax([x / tt for x in r]) for r in t]
    if sinkhorn:
        targets = _sinkhorn_loops(targets, 3)
    logq = []
    for r in s:
        m = max(x / ts for x in r)
        lse = m + math.log(sum(math.exp(x / ts - m) for x in r))
        logq.append([x / ts - lse for x in r])
    total, pairs = 0.0, 0
    for i in range(g):
        for j in range(v):
            if (j == i) if pairing == "swapped" else (j != i and j < g):
                continue
            total += sum(-sum(p * q for p, q in zip(targets[i * batch + b], logq[j * batch + b]))
                         for b in range(batch)) / batch
            pairs += 1
    loss = total / pairs
    if me_max:
        k = len(s[0])
        avg = [sum(math.exp(logq[r][c]) for r in range(len(s))) / len(s) for c in range(k)]
        loss += w * (sum(a * math.log(a) for a in avg) + math.log(k))
    return loss


@pytest.mark.parametrize("pairing, g, locals_, sinkhorn, me_max", [
    c for c in itertools.product(["same_view", "swapped"], [1, 2], [0, 3], [False, True], [False, True])
    if not (c[0] == "swapped" and c[1] == 1 and c[2] == 0)
])
def test_matches_reference(pairing, g, locals_, sinkhorn, me_max):
    torch.manual_seed(g + 10 * locals_)
    batch, k = 4, 7
    v = g + locals_
    s = torch.rand(v * batch, k) * 2 - 1  # cosine similarities
    t = torch.rand(g * batch, k) * 2 - 1
    loss = MsnLoss(teacher_temp=0.025, student_temp=0.1, pairing=pairing, sinkhorn=sinkhorn, me_max=me_max,
                   me_max_weight=0.5)
    expected = reference(s, t, g, v, batch, 0.025, 0.1, pairing, sinkhorn, me_max, 0.5)
    assert loss(s, t, num_teacher_views=g, num_global=g)["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_teacher_temperature_is_msn_sharpening():
    """MSN: targets = sharpen(softmax(cos / 0.1), T=0.25) = p ** 4 / sum(p ** 4)."""
    t = torch.rand(6, 9) * 2 - 1
    p = torch.softmax(t.double() / 0.1, dim=1)
    sharp = p ** 4 / (p ** 4).sum(1, keepdim=True)
    out = MsnLoss()(torch.zeros(6, 9), t, num_teacher_views=2, num_global=2)
    torch.testing.assert_close(out["teacher_probs"].double(), sharp, rtol=1e-5, atol=1e-7)


def test_sinkhorn_balances_prototypes():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(64, 8) * 3, dim=1)
    q = msn_sinkhorn(p, iters=50)
    torch.testing.assert_close(q.sum(1), torch.ones(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((8,), 64 / 8), atol=1e-3, rtol=0)


def test_gradients_reach_the_student_only():
    s = torch.randn(8, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    MsnLoss(me_max=True)(s, t, num_teacher_views=2, num_global=2)["loss"].backward()
    assert s.grad is not None and torch.count_nonzero(s.grad) > 0 and t.grad is None
