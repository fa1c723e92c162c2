"""Faults on a real local Ray (2 CPU training workers): crashed workers, damaged checkpoints.

One cluster for the module. The interrupted run must end with the same weights as an
uninterrupted run of the same seed, bitwise (CPU, same world size, deterministic sample stream).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rob_ray.config import load_config
from rob_ray.train.checkpoint import load_state
from rob_ray.train.faults import TrainingStopped
from rob_ray.train.launch import fit, init_ray, latest_checkpoint_dir
from tests.bad_images import make_corpus
from tests.conftest import DEMO_DATA, tiny_overrides

pytestmark = pytest.mark.ray

TWO_WORKERS = ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "data.num_actors=1",
               "data.cpus_per_actor=0.5", "scaling.ray_num_cpus=2"]
# 48 images / (2 workers x 8) = 3 steps per epoch, 3 epochs = 9 steps; checkpoints at 2, 3, 4, 6, 8, 9.
RUN = TWO_WORKERS + ["optim.epochs=3", "run.checkpoint_every_steps=2", "run.num_to_keep=2"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("ray_faults")
    folder = root / "images"
    for cls in sorted((DEMO_DATA / "train").iterdir())[:4]:
        (folder / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:12]:
            shutil.copy(f, folder / cls.name / f.name)
    init_ray(load_config(None, tiny_overrides(folder, root, "x") + RUN))
    yield folder, root
    ray.shutdown()


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _student(ckpt: Path) -> dict:
    return load_state(ckpt)["student"]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.fixture(scope="module")
def reference(cluster) -> dict:
    """The uninterrupted 9-step run's final student."""
    folder, root = cluster
    ref = fit(load_config(None, tiny_overrides(folder, root, "ref") + RUN))
    assert ref.metrics["step"] == 9 and ref.checkpoint_dir.name == "checkpoint_step_00000009"
    return _student(ref.checkpoint_dir)


def test_three_worker_crashes_then_truncated_checkpoint_end_like_an_uninterrupted_run(cluster, reference):
    folder, root = cluster

    # Rank 1 hard-exits during step 2 (no checkpoint yet), 5 (mid-epoch 1, right after the step-4
    # checkpoint, whose report the crash may lose) and 8 (mid-epoch 2).
    faulty = tiny_overrides(folder, root, "crash") + RUN + [
        "debug.fail_at_steps=[2, 5, 8]", "debug.fail_mode=exit", "debug.fail_rank=1", "run.max_failures=3"]
    cfg = load_config(None, faulty)
    res = fit(cfg)
    assert sorted(p.name for p in (res.run_dir / "faults").iterdir()) == ["step_2.fired", "step_5.fired", "step_8.fired"]
    assert res.metrics["step"] == 9
    steps = _steps(res.run_dir)
    assert steps == list(range(1, 10))  # restarts replayed steps, each restart cut the log back first
    assert res.checkpoint_dir.name == "checkpoint_step_00000009"
    _assert_same(_student(res.checkpoint_dir), reference)

    # Cut the newest checkpoint in half on disk: a relaunch reports it, resumes from step 8 and
    # recomputes step 9 into a fresh folder (Ray's bookkeeping never sees two checkpoints at one path).
    state = res.checkpoint_dir / "state.pt"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    assert latest_checkpoint_dir(res.run_dir).name == "checkpoint_step_00000008"
    again = fit(cfg)
    assert again.metrics["step"] == 9
    assert _steps(res.run_dir) == list(range(1, 10))  # step 9's row was cut, then logged again
    assert again.checkpoint_dir.name == "checkpoint_step_00000009_r1"
    _assert_same(_student(again.checkpoint_dir), reference)


def test_a_checkpoint_ray_never_recorded_is_resumed_from_then_removed(cluster, reference, capfd):
    # The driver is killed after the workers wrote checkpoint_step_2 but before Ray recorded it
    # (simulated: Ray's record is removed), after it had logged step 3. The relaunch must resume at 2.
    folder, root = cluster
    cfg = load_config(None, tiny_overrides(folder, root, "orphan") + RUN)
    first = fit(load_config(None, tiny_overrides(folder, root, "orphan") + RUN + ["optim.max_steps=2"]))
    assert first.checkpoint_dir.name == "checkpoint_step_00000002"
    (first.run_dir / "checkpoint_manager_snapshot.json").unlink()
    with open(first.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
    capfd.readouterr()
    res = fit(cfg)
    out = capfd.readouterr().out
    assert "resuming from checkpoint_step_00000002 (step 2): the newest complete checkpoint in the run folder; " \
           "Ray had recorded none" in out
    assert "removed superseded checkpoint folder(s) Ray did not track: checkpoint_step_00000002" in out
    assert _steps(res.run_dir) == list(range(1, 10))
    assert sorted(p.name for p in res.run_dir.glob("checkpoint_step_*")) == \
        ["checkpoint_step_00000008", "checkpoint_step_00000009"]  # Ray's last 2; the orphan is gone
    _assert_same(_student(res.checkpoint_dir), reference)


def test_bad_files_through_ray_data_are_counted_exactly(cluster, real_photos, tmp_path):
    _, root = cluster
    *_, bad = make_corpus(tmp_path / "c", real_photos, num_real=49)  # + 9 convertible + 6 bad = 8 steps of 8
    res = fit(load_config(None, tiny_overrides(tmp_path / "c", root, "bad") + [
        "optim.epochs=1", "scaling.ray_num_cpus=2", "data.cpus_per_actor=0.5"]))
    assert res.metrics["step"] == 8 and res.metrics["skipped_images"] == len(bad) == 6


def test_nonfinite_streak_stops_fit_with_a_clear_error(cluster):
    # Both workers skip steps 3 and 4 together (DDP would hang otherwise), then stop; the stop
    # reason travels from the workers' last report to fit(). Steps 1-2 leave checkpoint 2; the
    # stop saves the same weights again under step 2 (a fresh `_r1` folder for Ray).
    folder, root = cluster
    cfg = load_config(None, tiny_overrides(folder, root, "nan") + TWO_WORKERS + [
        "run.max_nonfinite_steps=2", "debug.nonfinite_at_steps=[3, 4]", "run.checkpoint_every_steps=2"])
    with pytest.raises(TrainingStopped, match=r"2 non-finite steps in a row \(steps 3-4.*checkpoint at step 2 "):
        fit(cfg)
    assert _steps(root / "nan") == [1, 2, 3, 4]
    assert latest_checkpoint_dir(root / "nan").name == "checkpoint_step_00000002_r1"
    _assert_same(_student(root / "nan" / "checkpoint_step_00000002_r1"),
                 _student(root / "nan" / "checkpoint_step_00000002"))
