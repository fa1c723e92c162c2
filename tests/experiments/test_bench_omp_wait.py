"""CI smoke test of experiments/bench_omp_wait.py: each OpenMP wait policy measured in its own process,
with the environment that policy needs. Timings are not asserted: only that each policy's process got its
settings and measured every column, and that the table's ratios are its rows'."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.processes import HANG_TIMEOUT_S

sys.path.insert(0, str(REPO / "experiments"))
import bench_omp_wait

from rob_ray.train.launch import WORKER_CPU_ENV


def test_policy_env_sets_one_wait_policy_over_the_workers_allocator_settings():
    user = {"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "7"}
    malloc = {k: v for k, v in WORKER_CPU_ENV.items() if k.startswith("MALLOC_")}
    assert malloc  # the worker's glibc settings exist and travel with every policy
    assert bench_omp_wait.policy_env(user, "passive") == {"PATH": "/bin", **malloc, "OMP_WAIT_POLICY": "PASSIVE"}
    assert bench_omp_wait.policy_env(user, "default") == {"PATH": "/bin", **malloc}  # libgomp's own default
    assert bench_omp_wait.policy_env(user, "spin:3000") == {"PATH": "/bin", **malloc, "GOMP_SPINCOUNT": "3000"}
    assert user["OMP_WAIT_POLICY"] == "ACTIVE"  # the caller's dict is not changed
    for bad in ("spin:", "spin:x", "ACTIVE"):
        with pytest.raises(ValueError, match="unknown policy"):
            bench_omp_wait.policy_env(user, bad)


def test_bench_omp_wait_smoke_measures_each_policy_in_its_own_process(tmp_path):
    out = tmp_path / "wait.json"
    proc = subprocess.run([sys.executable, "experiments/bench_omp_wait.py", "--smoke", "--policies",
                           "passive,spin:2000", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["policy"]: r for r in result["rows"]}
    assert list(rows) == ["passive", "spin:2000"] and result["rounds"] == 1
    for r in rows.values():
        assert r["region_us"] > 0 and r["one_thread_us"] > 0 and r["step_img_per_s"] > 0
        assert r["step_vs_first"] == pytest.approx(r["step_img_per_s"] / rows["passive"]["step_img_per_s"])
    assert rows["passive"]["step_vs_first"] == 1.0
    assert "| spin:2000 |" in proc.stdout and "--out" not in result["overrides"]

