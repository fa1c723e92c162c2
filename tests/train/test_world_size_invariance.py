"""The run's result does not depend on how many workers it had: the real training loop on two gloo
workers (no Ray), on one worker, and on two workers that lose one mid-run (resumed on one from the
checkpoint) end with the same student weights up to float reduction order; a simulated preemption
notice checkpoints at once, and the resumed run ends bitwise identical to an uninterrupted one."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.train import LocalContext, load_state
from rob_ray.train.loop import train_loop
from rob_ray.train.preemption import SimulatedPreemption
from tests.conftest import tiny_overrides

# GroupNorm student (BatchNorm statistics are per worker: the one thing a split changes by design).
NO_BN = ["student.arch=test_efficientnet_gn", "optim.global_batch_size=8", "run.checkpoint_every_steps=100"]
# Float reduction order (gradient all-reduce, sums over rows split in two) is the only difference left;
# AdamW's normalised steps carry it into the weights at ~1e-6 after 12 steps here.
WEIGHT_TOL = 1e-4


def _final_student(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_state(sorted((run_dir / "checkpoints").iterdir())[-1])["student"]


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def _gloo_worker(rank: int, world: int, store: str, overrides: list[str], data: str, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        table = scan_images(data)
        cfg = load_config(None, overrides)
        ctx = LocalContext(table, run_dir, num_to_keep=cfg.run.num_to_keep)
        ctx.rank, ctx.world_size = rank, world
        train_loop(cfg, ctx, len(table))
    finally:
        dist.destroy_process_group()


def _run_workers(world: int, overrides: list[str], data: Path, run_dir: Path) -> None:
    if world == 1:
        table = scan_images(data)
        cfg = load_config(None, overrides)
        train_loop(cfg, LocalContext(table, run_dir, num_to_keep=cfg.run.num_to_keep), len(table))
        return
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_gloo_worker, args=(world, f"{d}/store", overrides, str(data), str(run_dir)), nprocs=world,
                           join=True, start_method="spawn")  # fork is unsafe once torch ran in this process


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_two_workers_one_worker_and_a_lost_worker_end_alike(small_folder, tmp_path):
    def base(name):
        return tiny_overrides(small_folder, tmp_path, name) + NO_BN

    _run_workers(1, base("one"), small_folder, tmp_path / "one")
    _run_workers(2, base("two"), small_folder, tmp_path / "two")
    _run_workers(2, base("lost") + ["optim.max_steps=5", "run.checkpoint_every_steps=5"], small_folder, tmp_path / "lost")
    _run_workers(1, base("lost"), small_folder, tmp_path / "lost")  # one worker left: resumes at step 5
    ref = _final_student(tmp_path / "one")
    for name in ("two", "lost"):
        assert load_state(sorted((tmp_path / name / "checkpoints").iterdir())[-1])["step"] == 12
        assert _max_diff(_final_student(tmp_path / name), ref) < WEIGHT_TOL, name
        ref_loss, loss = _losses(tmp_path / "one"), _losses(tmp_path / name)
        assert sorted(loss) == sorted(ref_loss) == list(range(1, 13))
        for step, value in ref_loss.items():
            assert loss[step] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, step)
    assert "world_size" in load_state(sorted((tmp_path / "lost" / "checkpoints").iterdir())[-1])


def test_simulated_preemption_checkpoints_at_once_and_resumes_identically(small_folder, tmp_path, capsys):
    table = scan_images(small_folder)
    full_cfg = load_config(None, tiny_overrides(small_folder, tmp_path, "full") + ["run.checkpoint_every_steps=100"])
    train_loop(full_cfg, LocalContext(table, tmp_path / "full"), len(table))
    pre = tiny_overrides(small_folder, tmp_path, "pre") + ["run.checkpoint_every_steps=100", "debug.preempt_at_step=5"]
    with pytest.raises(SimulatedPreemption):
        train_loop(load_config(None, pre), LocalContext(table, tmp_path / "pre"), len(table))
    assert "[rob_ray] preemption notice at step 5: checkpoint saved" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "pre" / "checkpoints").iterdir()] == ["step_00000005"]
    metrics = train_loop(load_config(None, pre), LocalContext(table, tmp_path / "pre"), len(table))  # the restart
    assert metrics["step"] == 12
    a, b = _final_student(tmp_path / "full"), _final_student(tmp_path / "pre")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)  # bitwise on CPU


def test_two_students_on_two_workers_end_like_on_one(small_folder, tmp_path):
    """DDP per student: a two-student run on two gloo workers (each student its own DDP wrapper and
    gradient all-reduce, one teacher pass per rank) ends with each student's weights as on one worker."""
    students = ("students=[{name: a}, {name: b, student: {head: {hidden_dim: 48}}, optim: {lr: 0.002}, "
                "method: {student_temp: 0.2}}]")

    def base(name):
        return [*tiny_overrides(small_folder, tmp_path, name), *NO_BN, "optim.max_steps=6", students]

    _run_workers(1, base("one"), small_folder, tmp_path / "one")
    _run_workers(2, base("two"), small_folder, tmp_path / "two")
    one, two = (load_state(sorted((tmp_path / n / "checkpoints").iterdir())[-1]) for n in ("one", "two"))
    assert one["step"] == two["step"] == 6 and set(two["students"]) == {"a", "b"}
    for name in ("a", "b"):
        assert _max_diff(two["students"][name]["student"], one["students"][name]["student"]) < WEIGHT_TOL, name
    # The students really differ (their own LR, head and temperature), so the check above is per student.
    a, b = one["students"]["a"]["student"], one["students"]["b"]["student"]
    same_shape = {k: a[k] for k in a if a[k].is_floating_point() and a[k].shape == b[k].shape}
    assert _max_diff(same_shape, b) > 1e-3
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref]
    for r, q in zip(rows, ref):
        assert r["b/loss"] == pytest.approx(q["b/loss"], rel=1e-4, abs=1e-5)
