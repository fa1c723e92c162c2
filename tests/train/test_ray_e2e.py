"""End to end on a real local Ray: 2 CPU training workers with Ray Data actors, resume, and
`ray job submit` of a training and an eval job against a `ray start --head` cluster.

These start real clusters (one at a time) and take ~2-3 minutes in all on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from rob_ray.config import load_config
from rob_ray.train.checkpoint import load_state
from rob_ray.train.launch import fit, latest_checkpoint_dir
from tests.conftest import DEMO_DATA, REPO, tiny_overrides
from tests.processes import HANG_TIMEOUT_S, kill_session, wait_until

pytestmark = pytest.mark.ray

# data.actor_resources: a local Ray that rob_ray starts gets the custom resources the config asks for.
TWO_WORKERS = ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "data.num_actors=1",
               "data.cpus_per_actor=0.5", "scaling.ray_num_cpus=2", "data.actor_resources={data_cpu: 1}",
               "data.max_batches_ahead=2"]  # a capped stream still delivers every batch in order


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


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- `ray job submit` against a real head
# One head for the module (what cluster/README.md and README.md "On a cluster" describe): 2 CPUs
# and one `data_cpu` (the custom resource the cloud configs give their CPU-only data nodes).


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    ray_bin = str(Path(sys.executable).parent / "ray")
    # As for a user with the project's virtualenv active: the job's `python` is that venv's.
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    dash, gcs = _free_port(), _free_port()
    # `--block` keeps the head's processes in this process group, so the teardown stops exactly
    # this cluster (`ray stop` would stop every Ray on the machine).
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--num-cpus", "2",
                             "--resources", json.dumps({"data_cpu": 1}), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dash), "--port", str(gcs), "--object-store-memory", str(300 * 2**20)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_until(lambda: _answers(f"http://127.0.0.1:{dash}/api/version"), head)
    # The job's working dir is a clean copy of the project (what a user's clone uploads).
    work = tmp_path_factory.mktemp("proj") / "rob_ray"
    shutil.copytree(REPO, work, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", "*.pyc",
                                                               ".pytest_cache", ".ruff_cache"))
    try:
        yield {"ray": ray_bin, "env": env, "address": f"http://127.0.0.1:{dash}", "gcs_port": gcs, "work": work}
    finally:
        kill_session(head, signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM


def _submit(head: dict, entrypoint: list[str], runtime_env: dict | None = None) -> str:
    """`ray job submit --working-dir . [--runtime-env-json ...] -- ENTRYPOINT`; waits; returns the log."""
    cmd = [head["ray"], "job", "submit", "--address", head["address"], "--working-dir", str(head["work"])]
    if runtime_env is not None:
        cmd += ["--runtime-env-json", json.dumps(runtime_env)]
    proc = subprocess.run([*cmd, "--", *entrypoint], env=head["env"], capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
                          cwd=head["work"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"Job '[^']+' succeeded", proc.stdout), proc.stdout[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def train_job(ray_head, tmp_path_factory):
    """A tiny training job: runtime env from `run.py runtime-env`, outputs
    to a `file://` storage URI, augmentation actors pinned to `data_cpu`."""
    root = tmp_path_factory.mktemp("job")
    images = root / "images"
    for cls in sorted((DEMO_DATA / "train").iterdir())[:4]:
        (images / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:12]:
            shutil.copy(f, images / cls.name / f.name)
    # --no-pip: the head runs in the project's venv already. With the pip list the job also succeeds
    # here, but Ray then clones the whole 6 GB venv per job (~45 s): too heavy for CI.
    printed = subprocess.run([sys.executable, "experiments/run.py", "runtime-env", "--no-pip"], cwd=ray_head["work"],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    overrides = tiny_overrides(images, root, "job") + [
        f"run.storage_path=file://{root / 'bucket'}", "scaling.num_workers=1", "scaling.cpus_per_worker=1",
        "data.actor_resources={data_cpu: 1}", "optim.max_steps=3"]
    staging = Path(tempfile.gettempdir()).glob  # URI runs stage their files in rob_ray_<name>_* folders
    before = set(staging("rob_ray_job_*"))
    log = _submit(ray_head, ["python", "experiments/run.py", "train", *overrides], json.loads(printed))
    return {"log": log, "run_dir": root / "bucket" / "job", "root": root,
            "staging_left": set(staging("rob_ray_job_*")) - before}


def test_train_job_joins_the_head_and_writes_to_the_storage_uri(ray_head, train_job):
    log = train_job["log"]
    # The driver joined the `ray start --head` cluster (its GCS port, its 2 CPUs), never a second one.
    assert re.search(rf"\[rob_ray\] Ray: joined the running cluster at [\w.\-]+:{ray_head['gcs_port']} "
                     r"\(1 node\(s\), 2 CPU, 0 GPU\)", log), log[-3000:]
    assert "started a local Ray" not in log
    # The console carries rob_ray's compact lines, not Ray Train's per-report INFO dump.
    assert "Reporting training result" not in log and "TrainingReport(" not in log, log[-3000:]
    assert f"[rob_ray] saved checkpoint_step_00000003 in file://{train_job['root'] / 'bucket'}/job" in log, log[-3000:]
    run_dir = train_job["run_dir"]
    assert (run_dir / "config.yaml").is_file()
    assert _steps(run_dir) == [1, 2, 3]
    assert any((run_dir / "tensorboard").iterdir())
    assert latest_checkpoint_dir(run_dir).name == "checkpoint_step_00000003"
    assert load_state(latest_checkpoint_dir(run_dir))["step"] == 3
    assert train_job["staging_left"] == set()  # driver's and worker's staging copies removed after the upload


def test_eval_job_on_the_trained_run(ray_head, train_job):
    """Needs the `eval` subcommand (issue 5): k-NN of the job's checkpoint, written into its run folder."""
    data = train_job["root"] / "labelled"
    for split, files in (("train", slice(0, 6)), ("val", slice(6, 9))):
        for cls in sorted((DEMO_DATA / "val").iterdir())[:4]:
            (data / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[files]:
                shutil.copy(f, data / split / cls.name / f.name)
    run_dir = train_job["run_dir"]
    before = {p for p in run_dir.rglob("*.json")}
    _submit(ray_head, ["python", "experiments/run.py", "eval", "--checkpoint", str(run_dir), "--data", str(data),
                       "--protocol", "knn"])
    written = [p for p in run_dir.rglob("*.json") if p not in before and "checkpoint_step_" not in str(p)]
    assert any("knn" in p.read_text().lower() for p in written), sorted(str(p) for p in run_dir.rglob("*"))
