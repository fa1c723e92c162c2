"""Weighted k-NN against known answers and an explicit-loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from rob_ray.eval.knn import knn_accuracies, knn_predict, knn_top1


def clusters(n: int, c: int = 4, d: int = 16, spread: float = 10.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g) * spread
    y = torch.arange(n) % c
    return centres[y] + torch.randn(n, d, generator=g), y


def test_separable_clusters_are_classified_perfectly_for_every_k():
    x, y = clusters(400, seed=0)
    xt, yt = clusters(200, seed=0)  # same centres (same seed), new noise draws would be identical: perturb
    xt = xt + 0.1 * torch.randn(xt.shape, generator=torch.Generator().manual_seed(1))
    assert knn_accuracies(x, y, xt, yt, ks=(10, 20, 100, 200)) == {10: 100.0, 20: 100.0, 100: 100.0, 200: 100.0}


def test_labels_independent_of_features_give_chance():
    g = torch.Generator().manual_seed(3)
    c, n = 4, 4000
    x, xt = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
    y, yt = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g)
    # Binomial std of an accuracy at p=0.25 over 4000 queries is 0.7 points: allow 5 std.
    for k, acc in knn_accuracies(x, y, xt, yt, ks=(10, 200)).items():
        assert abs(acc - 25.0) < 3.5, (k, acc)


def _reference_scores(bank, labels, queries, k, t, c):
    out = torch.zeros(len(queries), c, dtype=torch.float64)
    for i, q in enumerate(queries.double()):
        sims = [(float(q @ b / (q.norm() * b.norm())), int(lab)) for b, lab in zip(bank.double(), labels)]
        for s, lab in sorted(sims, reverse=True)[:k]:
            out[i, lab] += math.exp(s / t)
    return out


@pytest.mark.parametrize("k,t", [(1, 0.07), (5, 0.07), (7, 0.5)])
def test_scores_match_an_explicit_loop(k, t):
    g = torch.Generator().manual_seed(k)
    bank, queries = torch.randn(30, 6, generator=g), torch.randn(9, 6, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    got = knn_predict(bank, labels, queries, k=k, temperature=t, num_classes=3)
    torch.testing.assert_close(got.double(), _reference_scores(bank, labels, queries, k, t, 3), rtol=1e-4, atol=1e-4)


def test_multi_k_pass_equals_one_k_at_a_time_and_clips_k():
    x, y = clusters(60, spread=0.7, seed=5)
    xt, yt = clusters(50, spread=0.7, seed=6)
    many = knn_accuracies(x, y, xt, yt, ks=(1, 3, 20, 500), chunk=7)
    for k in (1, 3, 20, 500):
        assert many[k] == pytest.approx(knn_top1(x, y, xt, yt, k=k))
    assert many[500] == pytest.approx(knn_top1(x, y, xt, yt, k=60))  # k > bank size uses the whole bank
