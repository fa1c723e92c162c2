"""Spherical k-means recovers planted clusters; init, chunking and empty clusters behave."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from rob_ray.prototypes.kmeans import assign, spherical_kmeans


def planted(k: int, per: int, dim: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k random unit centres, `per` noisy unit points around each; (points, labels, centres)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    labels = torch.arange(k).repeat_interleave(per)
    x = F.normalize(centres[labels] + noise * torch.randn(k * per, dim, generator=g) / dim ** 0.5, dim=1)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], labels[perm], centres


def contingency_is_permutation(pred: torch.Tensor, labels: torch.Tensor, k: int) -> bool:
    table = torch.zeros(k, k, dtype=torch.int64).index_put_((pred, labels), torch.ones_like(pred), accumulate=True)
    return bool(((table > 0).sum(0) == 1).all() and ((table > 0).sum(1) == 1).all())


@pytest.mark.parametrize("init", ["kmeans++", "auto"])
def test_recovers_planted_clusters(init: str) -> None:
    x, labels, centres = planted(k=12, per=40, dim=32, noise=0.3)
    r = spherical_kmeans(x * 3.0, 12, iterations=30, seed=1, init=init)  # any scale: normalised inside
    assert contingency_is_permutation(r.assignments, labels, 12)
    # each fitted centroid is (nearly) one planted centre
    cos = r.centroids @ centres.t()
    assert cos.max(1).values.min() > 0.97
    assert r.counts.sum() == len(x) and int(r.counts.min()) == 40
    assert abs(r.objective - float((x * r.centroids[r.assignments]).sum(1).mean())) < 1e-5
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(r.history))  # Lloyd never gets worse


def test_random_init_reaches_a_good_optimum() -> None:
    # A seeded draw of points can merge two planted clusters (a local optimum, as in any Lloyd run),
    # but it must still land near the planted objective and use every centroid.
    x, labels, centres = planted(k=12, per=40, dim=32, noise=0.3)
    planted_obj = float((x * centres[labels]).sum(1).mean())
    r = spherical_kmeans(x, 12, iterations=30, seed=1, init="random")
    assert r.init == "random" and int(r.counts.min()) > 0
    assert r.objective > planted_obj - 0.05


def test_seeded_and_reproducible() -> None:
    x, _, _ = planted(k=8, per=20, dim=16, noise=1.0)
    a = spherical_kmeans(x, 8, iterations=5, seed=3)
    b = spherical_kmeans(x, 8, iterations=5, seed=3)
    c = spherical_kmeans(x, 8, iterations=5, seed=4)
    assert torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.centroids, c.centroids)


def test_chunked_assignment_equals_one_block() -> None:
    x, _, _ = planted(k=50, per=7, dim=24, noise=2.0)
    c = F.normalize(torch.randn(50, 24), dim=1)
    full = (x @ c.t()).max(1)
    best, idx = assign(x, c, chunk_rows=13)
    assert torch.equal(idx, full.indices) and torch.allclose(best, full.values)


def test_empty_clusters_are_reseeded() -> None:
    # 30 copies of 3 distinct points, 6 centroids: Lloyd must re-seed the centroids nobody picks,
    # and no centroid row may be NaN.
    base = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    x = base.repeat(30, 1) + 1e-3 * torch.randn(90, 8, generator=torch.Generator().manual_seed(1))
    r = spherical_kmeans(x, 6, iterations=3, seed=0, init="random")
    assert torch.isfinite(r.centroids).all()
    assert torch.allclose(r.centroids.norm(dim=1), torch.ones(6), atol=1e-5)
    assert r.counts.sum() == 90


def test_refuses_fewer_points_than_k() -> None:
    with pytest.raises(ValueError, match="at least k=10 rows"):
        spherical_kmeans(torch.randn(5, 4), 10)
    with pytest.raises(ValueError, match="init must be"):
        spherical_kmeans(torch.randn(20, 4), 2, init="bogus")
