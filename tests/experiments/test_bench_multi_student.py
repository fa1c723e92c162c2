"""CI smoke test of experiments/bench_multi_student.py: three students in one run vs one after another at
tiny settings. Timings are not asserted; the weights are (each student equals its own run, bitwise on CPU).
And its --sweep part: the same LR sweep through Ray Tune on the shared-teacher and the per-trial path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.processes import HANG_TIMEOUT_S


def test_bench_multi_student_smoke(tmp_path):
    out = tmp_path / "multi.json"
    proc = subprocess.run([sys.executable, "experiments/bench_multi_student.py", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [s["student"] for s in r["students"]] == ["a", "b", "c"] and r["steps"] == 3
    assert r["bitwise_equal"] and all(s["final_loss_single"] == s["final_loss_multi"] for s in r["students"])
    assert r["multi_run_s"] > 0 and r["speedup"] == pytest.approx(r["one_after_another_s"] / r["multi_run_s"], rel=1e-2)
    assert all(0 < s["teacher_share"] < 1 for s in r["students"])
    assert "| a | test_resnet |" in proc.stdout and "weights bitwise equal: True" in proc.stdout


@pytest.mark.ray
def test_bench_multi_student_sweep_smoke(tmp_path):
    """--sweep --smoke: a 2-LR sweep through Ray Tune both ways (shared teacher, then per trial) in one local Ray."""
    out = tmp_path / "sweep.json"
    env = {**os.environ, "RAY_ADDRESS": "local", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "experiments/bench_multi_student.py", "--sweep", "--smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "sweep path: shared teacher (multi-student runs)" in proc.stdout
    assert "sweep path: one run per trial: tune.share_teacher is off" in proc.stdout
    r = json.loads(out.read_text())
    assert r["lrs"] == [0.001, 0.03] and r["steps_per_trial"] == 3 and r["all_done"]
    for path in ("shared", "per_trial"):
        assert sorted(t["lr"] for t in r["trials"][path]) == [0.001, 0.03]
        assert all(t["steps_run"] == 3 for t in r["trials"][path])
        assert 0 < r[f"{path}_teacher_share"] < 1 and r[f"{path}_loop_s"] < r[f"{path}_wall_s"]
    # The same configuration, data, seed and resources: the same result on either path, hence the same ranking.
    assert r["max_abs_best_diff"] == 0.0
    assert r["same_ranking"] and r["ranking_shared"] == r["ranking_per_trial"]
    assert r["speedup"] == pytest.approx(r["per_trial_wall_s"] / r["shared_wall_s"], rel=1e-2)
    assert "| per trial (share_teacher=false) |" in proc.stdout and "same ranking: True" in proc.stdout
