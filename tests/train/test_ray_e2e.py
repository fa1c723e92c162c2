"""End to end on a real local Ray: 2 CPU training workers with Ray Data actors, resume, job submit.

These start real clusters (one at a time) and take ~1-2 minutes in all on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rob_ray.config import load_config
from rob_ray.train.launch import fit, latest_checkpoint_dir
from tests.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.ray

TWO_WORKERS = ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "data.num_actors=1",
               "data.cpus_per_actor=0.5", "scaling.ray_num_cpus=2"]


@pytest.fixture
def ray_session():
    import ray

    yield
    ray.shutdown()


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_checkpoint_and_resume(small_folder, tmp_path, ray_session):
    # 48 images / (2 workers x 8) = 3 steps per epoch.
    base = tiny_overrides(small_folder, tmp_path, "ray2") + TWO_WORKERS + ["run.checkpoint_every_steps=2"]
    first = fit(load_config(None, [*base, "optim.max_steps=2"]))
    assert first.checkpoint_dir is not None and first.checkpoint_dir.name == "checkpoint_step_00000002"
    assert (first.run_dir / "config.yaml").is_file()
    assert first.metrics["step"] == 2 and first.metrics["skipped_images"] == 0

    second = fit(load_config(None, [*base, "optim.max_steps=5"]))
    assert second.metrics["step"] == 5
    assert latest_checkpoint_dir(second.run_dir).name == "checkpoint_step_00000005"
    assert _steps(second.run_dir) == [1, 2, 3, 4, 5]  # resumed at 3, no step repeated


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_job_submit_against_ray_start_head(small_folder, tmp_path):
    ray_bin = str(Path(sys.executable).parent / "ray")
    # As for a user with the project's virtualenv active: the job's `python` is that venv's.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    dash = _free_port()
    subprocess.run([ray_bin, "start", "--head", "--num-cpus", "2", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dash), "--port", str(_free_port()),
                    "--object-store-memory", str(300 * 2**20)], check=True, env=env, capture_output=True, timeout=180)
    try:
        storage = tmp_path / "runs"
        overrides = tiny_overrides(small_folder, storage, "job") + ["scaling.num_workers=1",
                                                                     "scaling.cpus_per_worker=1", "optim.max_steps=3"]
        # The job's working dir is a clean copy of the project (what a user's clone uploads).
        work = tmp_path / "proj"
        shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.pyc",
                                                                   ".pytest_cache", ".ruff_cache"))
        t0 = time.time()
        proc = subprocess.run([ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}",
                               "--working-dir", str(work), "--", "python", "experiments/run.py", "train", *overrides],
                              env=env, capture_output=True, text=True, timeout=420)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout.lower(), proc.stdout[-2000:]
        run_dir = storage / "job"
        assert _steps(run_dir) == [1, 2, 3]
        assert latest_checkpoint_dir(run_dir).name == "checkpoint_step_00000003"
        assert time.time() - t0 < 400
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
