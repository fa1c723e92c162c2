"""Feature objective loss against an explicit float64 loop over view pairs."""

from __future__ import annotations

import pytest
import torch

from rob_ray.losses.feature import FeatureLoss


def _reference(s, t, b, g, v, pairing):
    total, n = 0.0, 0
    for i in range(g):
        for j in range(v):
            ok = j != i if pairing == "swapped" else (j == i or j >= g or g == 1)
            if not ok:
                continue
            for k in range(b):
                a, c = s[j * b + k].double(), t[i * b + k].double()
                total += 1 - float(a @ c / (a.norm() * c.norm()))
                n += 1
    return total / n


@pytest.mark.parametrize("b, g, v, d, pairing", [(3, 2, 5, 7, "same_view"), (2, 2, 4, 5, "swapped"), (4, 1, 3, 6, "same_view")])
def test_feature_loss_matches_pairwise_cosine_loop(b, g, v, d, pairing):
    gen = torch.Generator().manual_seed(b * 10 + v)
    s, t = torch.randn(v * b, d, generator=gen), 5 * torch.randn(g * b, d, generator=gen)
    out = FeatureLoss(pairing)(s, t, num_teacher_views=g, num_global=g)
    assert out["loss"].item() == pytest.approx(_reference(s, t, b, g, v, pairing), rel=1e-5)


def test_aligned_student_has_zero_loss_whatever_the_scale():
    t = torch.randn(2 * 4, 8)
    assert FeatureLoss()(3.0 * t, t, num_teacher_views=2, num_global=2)["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert FeatureLoss()(-t, t, num_teacher_views=2, num_global=2)["loss"].item() == pytest.approx(2.0, abs=1e-6)


def test_feature_loss_width_mismatch_is_one_line():
    with pytest.raises(ValueError, match="student head has 4 outputs but the teacher embedding is 6-d"):
        FeatureLoss()(torch.randn(4, 4), torch.randn(4, 6), num_teacher_views=2, num_global=2)
