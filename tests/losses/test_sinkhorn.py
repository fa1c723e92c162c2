"""Sinkhorn-Knopp: equals an explicit-loop float64 reference, is stable, and distributes exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rob_ray.losses import sinkhorn_knopp
from tests.losses.reference import rows, sinkhorn, softmax


@pytest.mark.parametrize("iters", [0, 1, 3])
@pytest.mark.parametrize("eps", [0.03, 0.05, 0.5])
def test_matches_loop_reference(iters, eps):
    gen = torch.Generator().manual_seed(iters + int(eps * 100))
    scores = torch.nn.functional.normalize(torch.randn(7, 5, generator=gen), dim=1)  # cosine-like scores
    got = sinkhorn_knopp(scores, eps, iters)
    want = torch.tensor(sinkhorn(rows(scores), eps, iters), dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(7), atol=1e-5)


def test_zero_iterations_is_softmax():
    scores = torch.randn(4, 6)
    want = torch.tensor([softmax(r, 0.03) for r in rows(scores)], dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(scores, 0.03, 0).double(), want, rtol=1e-5, atol=1e-7)


def test_many_iterations_equipartition():
    codes = sinkhorn_knopp(torch.randn(40, 8) * 0.3, 0.05, 200)
    torch.testing.assert_close(codes.sum(0), torch.full((8,), 40 / 8), rtol=1e-3, atol=1e-3)


def test_huge_scores_stay_finite():
    # exp(300 / 0.03) overflows any float: the global max subtraction must remove the scale exactly.
    scores = torch.randn(6, 5, dtype=torch.float64)  # float64 so that +300 itself loses no precision
    got = sinkhorn_knopp(scores + 300.0, 0.03, 3)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, sinkhorn_knopp(scores, 0.03, 3), rtol=1e-5, atol=1e-6)


def test_rejects_negative_iterations():
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        sinkhorn_knopp(torch.randn(2, 3), 0.05, -1)


def _worker(rank: int, init_file: str, out_dir: str, parts: list) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        codes = sinkhorn_knopp(parts[rank], 0.03, 3)
        torch.save(codes, f"{out_dir}/codes_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    gen = torch.Generator().manual_seed(3)
    full = torch.nn.functional.normalize(torch.randn(9, 6, generator=gen), dim=1)
    parts = [full[:4].clone(), full[4:].clone()]  # unequal shards: the sample count is all-reduced too
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), parts), nprocs=2, join=True)
    got = torch.cat([torch.load(tmp_path / f"codes_{r}.pt") for r in range(2)])
    torch.testing.assert_close(got, sinkhorn_knopp(full, 0.03, 3), rtol=1e-5, atol=1e-6)
    # ... and differs from each shard solved alone (the all-reduces matter).
    alone = torch.cat([sinkhorn_knopp(p, 0.03, 3) for p in parts])
    assert not torch.allclose(got, alone, atol=1e-4)
    assert math.isclose(float(got.sum()), 9.0, rel_tol=1e-5)
