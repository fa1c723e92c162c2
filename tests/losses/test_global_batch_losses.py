"""The distributed objectives are defined over the global batch: one worker with the whole batch and
two gloo workers with a slice each (even 3+3, or uneven 3+2 with the loop's `rank_share` loss weight)
give the same loss, the same gradient on every student row and the same state (centre, queue)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rob_ray.data.schedule import SampleSchedule
from rob_ray.losses import DinoLoss, IbotLoss, MsnLoss, SwavLoss
from rob_ray.train.elastic import global_mean, rank_share

G_VIEWS, V_VIEWS, K, P, STEPS = 2, 3, 6, 4, 4


def _build(name: str):
    if name == "dino_ema":
        return DinoLoss(K, centering="ema", pairing="swapped")
    if name == "dino_sinkhorn":
        return DinoLoss(K, teacher_norm="sinkhorn")
    if name == "swav_queue":
        return SwavLoss(K, epsilon=0.05, queue_length=8, num_teacher_views=G_VIEWS)
    if name == "msn":
        return MsnLoss(sinkhorn=True, me_max=True)
    return IbotLoss(lambda2=1.0)


def _data(step: int, n: int):
    gen = torch.Generator().manual_seed(100 + step)
    return {"s": torch.randn(V_VIEWS * n, K, generator=gen, dtype=torch.float64),
            "t": torch.randn(G_VIEWS * n, K, generator=gen, dtype=torch.float64),
            "sp": torch.randn(G_VIEWS * n, P, K, generator=gen, dtype=torch.float64),
            "tp": torch.randn(G_VIEWS * n, P, K, generator=gen, dtype=torch.float64),
            "m": torch.rand(G_VIEWS * n, P, generator=gen) < 0.5}


def _rows(x: torch.Tensor, views: int, n: int, lo: int, hi: int) -> torch.Tensor:
    """Rows of images lo..hi-1 of every view (view-major layout)."""
    return torch.cat([x[v * n + lo: v * n + hi] for v in range(views)])


def _run(name: str, n: int, lo: int, hi: int, weight: float) -> list[dict]:
    """STEPS steps of the loss on images lo..hi-1 of an n-image global batch; returns per-step results."""
    loss, out = _build(name).double(), []
    for step in range(STEPS):
        d = _data(step, n)
        s = _rows(d["s"], V_VIEWS, n, lo, hi).requires_grad_(True)
        t = _rows(d["t"], G_VIEWS, n, lo, hi)
        kw = {"num_teacher_views": G_VIEWS, "num_global": G_VIEWS}
        if name == "ibot":
            sp = _rows(d["sp"], G_VIEWS, n, lo, hi).requires_grad_(True)
            res = loss(s, sp, t, _rows(d["tp"], G_VIEWS, n, lo, hi), _rows(d["m"], G_VIEWS, n, lo, hi), **kw)
        else:
            res = loss(s, t, **kw)
        (res["loss"] * weight).backward()
        got = {"loss": float(res["loss"].detach()), "grad": s.grad.clone(),
               "state": {k: v.clone() for k, v in loss.state_dict().items()}}
        if name == "ibot":
            got["patch_grad"] = sp.grad.clone()
        out.append(got)
    return out


NAMES, GLOBAL_BATCHES = ["dino_ema", "dino_sinkhorn", "swav_queue", "msn", "ibot"], [6, 5]


def _worker(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}/init", rank=rank, world_size=2)
    try:
        out = {}
        for name in NAMES:
            for global_batch in GLOBAL_BATCHES:
                sched = SampleSchedule(num_images=100, world_size=2, batch_size=1, epochs=1, global_batch=global_batch)
                lo, hi = sched.rank_slice(rank)
                share = rank_share(sched, rank)
                # DDP averages the ranks' gradients: each rank's part of the global gradient is share / W.
                res = _run(name, global_batch, lo, hi, share / 2)
                for r in res:
                    r["global_loss"] = global_mean(r["loss"], hi - lo, global_batch, 2)
                out[name, global_batch] = {"lo": lo, "hi": hi, "res": res}
        torch.save(out, f"{store}/rank_{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_workers():
    """Every case on two gloo workers, in one pair of spawned processes (fork is unsafe after torch ran)."""
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(d,), nprocs=2, join=True)
        return [torch.load(Path(d, f"rank_{r}.pt")) for r in range(2)]


@pytest.mark.parametrize("global_batch", GLOBAL_BATCHES)
@pytest.mark.parametrize("name", NAMES)
def test_two_workers_match_one_worker_with_the_whole_batch(two_workers, name, global_batch):
    whole = _run(name, global_batch, 0, global_batch, 1.0)
    ranks = [w[name, global_batch] for w in two_workers]
    # The losses compute in float32 (inputs are float64 here): agreement to float32 rounding.
    tol = {"rtol": 1e-5, "atol": 1e-7}
    for step in range(STEPS):
        want = whole[step]
        for rk in ranks:
            got = rk["res"][step]
            assert got["global_loss"] == pytest.approx(want["loss"], rel=1e-6), (name, step)
            torch.testing.assert_close(got["grad"], _rows(want["grad"], V_VIEWS, global_batch, rk["lo"], rk["hi"]), **tol)
            if name == "ibot":
                torch.testing.assert_close(got["patch_grad"],
                                           _rows(want["patch_grad"], G_VIEWS, global_batch, rk["lo"], rk["hi"]), **tol)
            for key, value in want["state"].items():  # centre, queue: the same on every rank as with one worker
                torch.testing.assert_close(got["state"][key], value, **tol)
