"""Faults without Ray: injected failures + relaunch, damaged checkpoints, non-finite steps, best checkpoint.

Every "equal" below is bitwise against an uninterrupted run of the same seed (CPU is deterministic).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.train import LocalContext, load_state
from rob_ray.train.best import BestCheckpoint
from rob_ray.train.checkpoint import CheckpointError, LocalCheckpoints, save_state
from rob_ray.train.checkpoint import load_state as load_dir
from rob_ray.train.faults import InjectedFault, NonFiniteGuard
from rob_ray.train.loop import train_loop
from tests.conftest import DEMO_DATA, tiny_overrides

# 48 images / batch 8 = 6 steps per epoch, 2 epochs = 12 steps; checkpoints at 3, 6, 9, 12.
EVERY3 = ["run.checkpoint_every_steps=3", "run.num_to_keep=2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "images"
    for cls in sorted((DEMO_DATA / "train").iterdir())[:4]:
        (root / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:12]:
            shutil.copy(f, root / cls.name / f.name)
    return root


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    """The uninterrupted 12-step run: final student and optimiser state."""
    storage = tmp_path_factory.mktemp("ref")
    cfg = load_config(None, tiny_overrides(folder, storage, "ref") + EVERY3)
    _run(cfg, folder, storage / "ref")
    return load_state(storage / "ref" / "checkpoints" / "step_00000012")


def _run(cfg, folder, run_dir):
    table = scan_images(folder)
    ctx = LocalContext(table, run_dir, num_to_keep=cfg.run.num_to_keep)
    return ctx, train_loop(cfg, ctx, len(table))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def _metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_injected_failures_then_relaunch_equal_uninterrupted(folder, tmp_path, reference):
    # Step 2: before any checkpoint; 5: mid-epoch 0 (from 3); 10: mid-epoch 1 (from 9).
    cfg = load_config(None, tiny_overrides(folder, tmp_path, "f") + EVERY3 + ["debug.fail_at_steps=[2, 5, 10]"])
    failures = []
    for _ in range(5):
        try:
            _, metrics = _run(cfg, folder, tmp_path / "f")
            break
        except InjectedFault as exc:
            failures.append(str(exc))
    assert [f.split()[-1] for f in failures] == ["2", "5", "10"]
    assert metrics["step"] == 12
    assert sorted(p.name for p in (tmp_path / "f" / "faults").iterdir()) == \
        ["step_10.fired", "step_2.fired", "step_5.fired"]
    final = load_state(tmp_path / "f" / "checkpoints" / "step_00000012")
    _assert_same(final["student"], reference["student"])
    assert final["optimizer"]["state"].keys() == reference["optimizer"]["state"].keys()
    for k, st in final["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(st[name], reference["optimizer"]["state"][k][name], rtol=0, atol=0)
    # Each relaunch trims the rows logged after its checkpoint (1 | 3 | 9): the log never folds back.
    assert [r["step"] for r in _metric_rows(tmp_path / "f")] == list(range(1, 13))


def test_truncated_newest_checkpoint_falls_back_and_finishes_identically(folder, tmp_path, reference, capsys):
    cfg = load_config(None, tiny_overrides(folder, tmp_path, "t") + EVERY3)
    _run(cfg, folder, tmp_path / "t")
    ckpts = LocalCheckpoints(tmp_path / "t")
    assert [p.name for p in ckpts.list()] == ["step_00000009", "step_00000012"]
    newest = ckpts.list()[-1] / "state.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    path, state = ckpts.latest()
    assert path.name == "step_00000009" and state["step"] == 9
    assert "step_00000012' is truncated" in capsys.readouterr().out

    _, metrics = _run(cfg, folder, tmp_path / "t")  # relaunch: resumes at 9, recomputes 10-12
    assert metrics["step"] == 12
    assert [r["step"] for r in _metric_rows(tmp_path / "t")] == list(range(1, 13))  # 10-12 logged once
    _assert_same(load_state(tmp_path / "t" / "checkpoints" / "step_00000012")["student"], reference["student"])


def test_checksum_and_incomplete_checkpoints_are_refused(tmp_path):
    state = {"w": torch.arange(1000, dtype=torch.float32), "step": 3}
    d = save_state(tmp_path / "c", state, {"step": 3})
    assert torch.equal(load_dir(d)["w"], state["w"])
    raw = bytearray((d / "state.pt").read_bytes())
    i = raw.find(torch.arange(1000, dtype=torch.float32)[500:501].numpy().tobytes())
    raw[i] ^= 0x01  # one flipped bit inside the tensor data: same size, still a valid zip
    (d / "state.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match its SHA-256"):
        load_dir(d)
    d2 = save_state(tmp_path / "c2", state, {"step": 3})
    (d2 / "meta.json").unlink()  # a copy cut short before its last file
    with pytest.raises(CheckpointError, match=r"incomplete: meta\.json missing"):
        load_dir(d2)


def test_one_nonfinite_step_is_skipped(folder, tmp_path):
    base = tiny_overrides(folder, tmp_path, "n") + ["run.checkpoint_every_steps=1", "run.num_to_keep=20",
                                                    "debug.nonfinite_at_steps=[4]"]
    _, m4 = _run(load_config(None, [*base, "optim.max_steps=4"]), folder, tmp_path / "n")
    assert m4["step"] == 4 and m4["nonfinite_steps"] == 1
    _, m5 = _run(load_config(None, [*base, "optim.max_steps=5"]), folder, tmp_path / "n")  # resumes at 4
    assert m5["step"] == 5 and m5["nonfinite_steps"] == 1  # the count survived the resume
    at3, at4, at5 = (load_state(tmp_path / "n" / "checkpoints" / f"step_{s:08d}") for s in (3, 4, 5))
    _assert_same(at4["student"], at3["student"])  # step 4 changed nothing...
    assert any(not torch.equal(at5["student"][k], at4["student"][k]) for k in at4["student"])  # ...step 5 did
    assert all(torch.isfinite(v).all() for v in at5["student"].values() if v.is_floating_point())
    steps = [int(next(iter(s["optimizer"]["state"].values()))["step"]) for s in (at3, at4, at5)]
    assert steps == [3, 3, 4]  # the optimiser never counted the skipped step
    assert at5["nonfinite"] == {"total": 1}


def test_too_many_nonfinite_steps_stop_with_the_prefault_checkpoint(folder, tmp_path, capsys):
    over = tiny_overrides(folder, tmp_path, "s") + EVERY3 + ["run.max_nonfinite_steps=3",
                                                             "debug.nonfinite_at_steps=[5, 6, 7]"]
    _, metrics = _run(load_config(None, over), folder, tmp_path / "s")
    assert metrics["step"] == 7 and metrics["nonfinite_steps"] == 3
    assert "3 non-finite steps in a row (steps 5-7" in metrics["stop_reason"]
    assert "checkpoint at step 4 holds the weights from before the fault" in capsys.readouterr().out
    # No checkpoint at 6 (inside the streak); the stop checkpoint is step 4 = a clean 4-step run.
    assert [p.name for p in LocalCheckpoints(tmp_path / "s").list()] == ["step_00000003", "step_00000004"]
    clean = tiny_overrides(folder, tmp_path, "c") + EVERY3 + ["optim.max_steps=4"]
    _run(load_config(None, clean), folder, tmp_path / "c")
    _assert_same(load_state(tmp_path / "s" / "checkpoints" / "step_00000004")["student"],
                 load_state(tmp_path / "c" / "checkpoints" / "step_00000004")["student"])


def test_best_checkpoint_kept_beside_last_k(folder, tmp_path):
    over = tiny_overrides(folder, tmp_path, "b") + ["run.checkpoint_every_steps=1", "run.num_to_keep=2",
                                                    "run.checkpoint_score_metric=loss", "run.checkpoint_score_mode=min",
                                                    "optim.max_steps=6"]
    _run(load_config(None, over), folder, tmp_path / "b")
    rows = _metric_rows(tmp_path / "b")
    best_step = min(rows, key=lambda r: r["loss"])["step"]
    assert [p.name for p in LocalCheckpoints(tmp_path / "b").list()] == ["step_00000005", "step_00000006"]
    meta = json.loads((tmp_path / "b" / "best" / "meta.json").read_text())
    assert meta["step"] == best_step and meta["loss"] == pytest.approx(min(r["loss"] for r in rows))
    # Its weights are those of a run stopped at that step.
    again = tiny_overrides(folder, tmp_path, "b2") + ["run.checkpoint_every_steps=1", f"optim.max_steps={best_step}"]
    _run(load_config(None, again), folder, tmp_path / "b2")
    _assert_same(load_state(tmp_path / "b" / "best")["student"],
                 load_state(tmp_path / "b2" / "checkpoints" / f"step_{best_step:08d}")["student"])


def test_best_checkpoint_survives_relaunch(tmp_path):
    state = {"w": torch.zeros(2)}
    best = BestCheckpoint(tmp_path, "online_knn_top1", "max")
    assert best.update(1, state, {"online_knn_top1": 0.3})
    assert not best.update(2, state, {"loss": 1.0})  # metric absent at this step
    assert best.update(3, {"w": torch.ones(2)}, {"online_knn_top1": 0.5})
    assert not best.update(4, state, {"online_knn_top1": float("nan")})
    again = BestCheckpoint(tmp_path, "online_knn_top1", "max")  # a relaunch reads the recorded best
    assert again.best == 0.5 and not again.update(5, state, {"online_knn_top1": 0.4})
    assert load_state(tmp_path / "best")["w"].tolist() == [1.0, 1.0]
    assert json.loads((tmp_path / "best" / "meta.json").read_text())["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary folder left behind


def _guard_worker(rank: int, store_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store_dir}/store", rank=rank, world_size=2)
    guard = NonFiniteGuard(max_in_a_row=2, world_size=2)
    p = torch.nn.Parameter(torch.ones(3))
    decisions = []
    for bad_rank in (None, 1, 0, None):
        loss = (p * 2).sum() * (float("nan") if rank == bad_rank else 1.0)
        p.grad = None
        loss.backward()
        decisions.append(guard.step_ok(loss, [p]))
    Path(store_dir, f"rank{rank}.json").write_text(json.dumps([decisions, guard.total, guard.in_a_row]))
    torch.distributed.destroy_process_group()


def test_nonfinite_decision_is_the_same_on_every_rank():
    # Without DDP each rank has its own gradients: only the all-reduced flag keeps them in step.
    # fork: the children reuse this process's imports (spawn would re-import torch twice).
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_guard_worker, args=(d,), nprocs=2, join=True, start_method="fork")
        got = [json.loads(Path(d, f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0] == got[1] == [[True, False, False, True], 2, 0]
