"""A real Ray Tune sweep over Ray Train on 2 CPUs: outputs, ASHA early stopping, resume."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time

import pytest
import yaml

from rob_ray.config import ConfigError, load_config
from rob_ray.tune.sweep import plan_concurrency
from tests.conftest import REPO, tiny_overrides
from tests.processes import HANG_TIMEOUT_S, kill_session, wait_until

pytestmark = pytest.mark.ray

LRS = [0.5, 0.5, 0.5, 1e-9]  # the last one learns nothing: ASHA must cut it


def _sweep_args(data, storage, name):
    return ["tune", *tiny_overrides(data, storage, name),
            "optim.epochs=4", "optim.lr=0.5", "method.teacher_temp=1.0",
            "scaling.num_workers=1", "scaling.cpus_per_worker=0.3", "data.cpus_per_actor=0.3", "scaling.ray_num_cpus=2",
            "run.log_every_steps=3", "run.checkpoint_every_steps=6",
            f"tune.search_space={{optim.lr: {{grid: {LRS}}}}}", "tune.num_samples=1", "tune.metric=loss",
            "tune.mode=min", "tune.grace_period=1", "tune.reduction_factor=2", "tune.max_concurrent_trials=3",
            "tune.share_teacher=false"]  # optim.lr alone would share the teacher: this tests the per-trial path


def _run_cli(args):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, str(REPO / "experiments" / "run.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _rows(sweep_dir):
    with open(sweep_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_concurrency_plan_and_impossible_sweep():
    cfg = load_config(None, ["scaling.cpus_per_worker=0.3", "data.cpus_per_actor=0.3"])
    assert plan_concurrency(cfg, 2, 0) == 3  # 0.61 CPU per trial
    with pytest.raises(ConfigError, match=r"one trial needs 3.01 CPUs .* the cluster has 2 CPUs"):
        plan_concurrency(load_config(None, ["scaling.cpus_per_worker=2", "data.cpus_per_actor=1"]), 2, 0)


@pytest.mark.timeout(2 * HANG_TIMEOUT_S)  # two launches of a sweep
def test_sweep_outputs_asha_and_resume(small_folder, tmp_path):
    sweep_dir = tmp_path / "runs" / "sw"
    # First launch: kill the sweep driver once the first trial has a checkpoint.
    proc = _run_cli(_sweep_args(small_folder, tmp_path / "runs", "sw"))
    wait_until(lambda: bool(list((sweep_dir / "trials").glob("*/checkpoint_step_*"))), proc)
    kill_session(proc)  # the driver and the local Ray it started, nothing else
    assert not (sweep_dir / "trials.csv").exists()

    # Second launch: the same command resumes and finishes.
    t0 = time.time()
    proc = _run_cli(_sweep_args(small_folder, tmp_path / "runs", "sw"))
    out, _ = proc.communicate(timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, out[-4000:]
    assert "resuming sweep" in out
    rows = _rows(sweep_dir)
    assert len(rows) == 4 and {float(r["optim.lr"]) for r in rows} == set(LRS)
    bad = next(r for r in rows if float(r["optim.lr"]) == 1e-9)
    good = [r for r in rows if float(r["optim.lr"]) == 0.5]
    assert bad["stopped_early"] == "True" and int(bad["steps_run"]) < 24
    assert min(float(r["best_loss"]) for r in good) < float(bad["best_loss"])
    best = load_config(sweep_dir / "best_config.yaml")
    assert best.optim.lr == 0.5 and best.run.name == "sw_best"
    assert yaml.safe_load((sweep_dir / "best_config.yaml").read_text())["tune"]["search_space"] == {}
    png = (sweep_dir / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    print(f"resumed sweep finished in {time.time() - t0:.0f}s")


@pytest.mark.timeout(HANG_TIMEOUT_S)
def test_student_side_sweep_shares_the_teacher_and_cuts_the_weak_student(small_folder, tmp_path):
    sweep_dir = tmp_path / "runs" / "gs"
    args = [a for a in _sweep_args(small_folder, tmp_path / "runs", "gs") if a != "tune.share_teacher=false"]
    proc = _run_cli(args)
    out, _ = proc.communicate(timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, out[-4000:]
    assert "sweep path: shared teacher (multi-student runs)" in out
    assert [p.name for p in (sweep_dir / "groups").iterdir()] == ["group_0"]  # one run for the four trials
    assert not (sweep_dir / "trials").exists()
    rows = _rows(sweep_dir)
    assert len(rows) == 4 and sorted(float(r["optim.lr"]) for r in rows) == sorted(LRS)
    bad = next(r for r in rows if float(r["optim.lr"]) == 1e-9)
    good = [r for r in rows if float(r["optim.lr"]) == 0.5]
    assert bad["stopped_early"] == "True" and int(bad["steps_run"]) < 24
    assert all(r["stopped_early"] == "False" and int(r["steps_run"]) == 24 for r in good)
    assert len({r["final_loss"] for r in good}) == 1  # the same config trained beside others: the same result
    assert load_config(sweep_dir / "best_config.yaml").optim.lr == 0.5
