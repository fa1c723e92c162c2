"""KD baseline loss against a hand computation (explicit loops, float64); unlabelled data is refused when alpha < 1."""

from __future__ import annotations

import math

import pytest
import torch

from rob_ray.losses import KDLoss
from tests.losses.reference import pairs, rows, softmax


def _hand(student, teacher, labels, alpha, temp, g, v, num_global, pairing):
    b = len(labels)
    s, t = rows(student), rows(teacher)
    kls = []
    for i, j in pairs(g, v, num_global, pairing):
        total = 0.0
        for n in range(b):
            p, q = softmax(t[i * b + n], temp), softmax(s[j * b + n], temp)
            total += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q, strict=True))
        kls.append(total / b)
    kd = sum(kls) / len(kls)
    ce = 0.0
    for j in range(v):
        for n in range(b):
            row = s[j * b + n]
            ce += -(row[labels[n]] - math.log(sum(math.exp(x) for x in row)))
    ce /= v * b
    return (1 - alpha) * ce + alpha * temp**2 * kd if alpha < 1 else temp**2 * kd


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("pairing", ["same_view", "swapped"])
def test_matches_hand_computation(alpha, pairing):
    gen = torch.Generator().manual_seed(int(alpha * 10))
    b, k, g, v = 3, 4, 2, 4
    student, teacher = torch.randn(v * b, k, generator=gen) * 3, torch.randn(g * b, k, generator=gen) * 3
    labels = [2, 0, 3]
    out = KDLoss(alpha, temperature=10.0, pairing=pairing)(student, teacher, torch.tensor(labels),
                                                           num_teacher_views=2, num_global=2)
    want = _hand(student, teacher, labels, alpha, 10.0, g, v, 2, pairing)
    assert abs(float(out["loss"]) - want) < 1e-5 * max(1.0, abs(want))


def test_identical_logits_give_zero_kd_and_t_squared_scaling():
    logits = torch.randn(2, 5)
    out = KDLoss(1.0, temperature=4.0)(logits, logits, torch.tensor([-1]), num_teacher_views=2, num_global=2)
    assert abs(float(out["loss"])) < 1e-6
    s, t = torch.randn(2, 5), torch.randn(2, 5)
    l4 = float(KDLoss(1.0, temperature=4.0)(s, t, torch.tensor([-1]), num_teacher_views=2, num_global=2)["loss"])
    kd4 = float(KDLoss(1.0, temperature=4.0)(s, t, torch.tensor([-1]), num_teacher_views=2, num_global=2)["kd"])
    assert abs(l4 - 16 * kd4) < 1e-6


def test_unlabelled_images_need_alpha_one():
    with pytest.raises(ValueError, match=r"unlabelled.*method.alpha=1"):
        KDLoss(0.5)(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([1, -1]), num_teacher_views=2, num_global=2)
    # fine without labels
    KDLoss(1.0)(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([-1, -1]), num_teacher_views=2, num_global=2)
