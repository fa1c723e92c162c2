"""Rank-local method state is checkpointed per worker: gathered from every rank at a checkpoint, and each
rank takes its own entry back on resume. (The SwAV queue is global now, the same on every rank; a
SwAV method that declares its queue rank-local stands in for a method with per-rank state.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from rob_ray.losses.swav import SwavLoss
from rob_ray.methods.swav import SwavMethod
from rob_ray.train.checkpoint import load_state, save_state
from rob_ray.train.rank_state import gather_rank_state, restore_rank_state


def _method(queue_length: int = 4) -> SwavMethod:
    m = SwavMethod(None, None, SwavLoss(num_prototypes=3, queue_length=queue_length, num_teacher_views=2))
    if queue_length:
        m.rank_local_keys = ("loss.queue", "loss.queue_count")
    return m


def _fill(method: SwavMethod, value: float, count: int) -> None:
    method.loss.queue.fill_(value)
    method.loss.queue_count.fill_(count)


def test_methods_without_rank_local_state_gather_nothing():
    assert gather_rank_state(_method(queue_length=0), world_size=1) is None
    assert restore_rank_state(_method(queue_length=0), [{"x": torch.ones(1)}], 0, 1) is None


def test_each_rank_takes_its_own_entry_and_a_new_worker_count_is_noted(tmp_path):
    saved = []
    for r in range(2):
        m = _method()
        _fill(m, float(r + 1), 10 + r)
        saved += gather_rank_state(m, world_size=1)
    save_state(tmp_path / "ck", {"method_ranks": saved}, {"step": 1})  # survives the checkpoint format
    saved = load_state(tmp_path / "ck")["method_ranks"]
    for r in range(2):
        m = _method()
        assert restore_rank_state(m, saved, r, world_size=2) is None
        assert torch.all(m.loss.queue == r + 1) and int(m.loss.queue_count) == 10 + r
    m = _method()  # 3 workers now: worker 2 continues from saved worker 0
    note = restore_rank_state(m, saved, 2, world_size=3)
    assert torch.all(m.loss.queue == 1) and "saved by 2 workers and resumes on 3" in note


def _gather_worker(rank: int, store_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store_dir}/store", rank=rank, world_size=2)
    try:
        m = _method()
        _fill(m, 5.0 + rank, 7)
        torch.save(gather_rank_state(m, world_size=2), f"{store_dir}/gathered_{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_gather_in_rank_order():
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_gather_worker, args=(d,), nprocs=2, join=True, start_method="fork")
        got = torch.load(Path(d, "gathered_0.pt"))
    assert [float(e["loss.queue"].mean()) for e in got] == [5.0, 6.0]
    assert [int(e["loss.queue_count"]) for e in got] == [7, 7]
