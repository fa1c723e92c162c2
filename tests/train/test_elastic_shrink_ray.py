"""An elastic group that loses a node mid-run: a real two-node local Ray (`ray.cluster_utils.Cluster`,
two raylets on this machine), one training worker per node (a custom `slot` resource), worker range
1-2. During step 4 rank 0 hangs (`debug.fail_mode=hang`: a machine on its way out); the test then
removes the second node, which kills the worker there (the hung one, or the one waiting for it at
the next collective). Ray Train restarts the group with the one worker the cluster still fits, from
the newest checkpoint (step 2), and the run ends with the weights of a one-worker run without Ray
(same global batch), up to float reduction order.

Why two nodes: in Ray 2.60's code the elastic policy sizes the group from the nodes' *total*
resources (its AutoscalingCoordinator reads `ray.nodes()`), so on a single-node Ray a worker that
dies on a node that stays is restarted at the same size; only a node that goes shrinks the group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.ray

SETTINGS = ["student.arch=test_efficientnet_gn", "optim.global_batch_size=8", "optim.max_steps=6",
            "run.checkpoint_every_steps=2", "scaling.cpus_per_worker=0.5", "data.num_actors=1",
            "data.cpus_per_actor=0.5"]


def _remove_node_when(marker: Path, cluster, node, stop: threading.Event, removed: list) -> None:
    while not marker.exists() and not stop.is_set():
        stop.wait(0.2)
    if marker.exists():
        cluster.remove_node(node)
        removed.append(True)


def shrink_run(folder: Path, tmp_path: Path) -> dict:
    """The two-node run, in a process of its own (`python tests/train/test_elastic_shrink_ray.py FOLDER TMP`):
    its cluster runs without token authentication, a setting Ray reads once per process, so it must not
    leak into the other Ray tests of a pytest session. Returns what the test checks."""
    import ray
    from ray.cluster_utils import Cluster

    from rob_ray.config import load_config
    from rob_ray.data import scan_images
    from rob_ray.train import LocalContext, load_state
    from rob_ray.train.launch import fit, init_ray, latest_checkpoint_dir
    from rob_ray.train.loop import train_loop

    table = scan_images(folder)
    ref_cfg = load_config(None, tiny_overrides(folder, tmp_path, "ref") + SETTINGS)
    train_loop(ref_cfg, LocalContext(table, tmp_path / "ref"), len(table))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"slot": 1}})
    stop, removed = threading.Event(), []
    try:
        second = cluster.add_node(num_cpus=1, resources={"slot": 1})
        cfg = load_config(None, tiny_overrides(folder, tmp_path, "shrink") + SETTINGS + [
            "scaling.num_workers=1-2", "scaling.worker_resources={slot: 1}", f"scaling.ray_address={cluster.address}",
            "scaling.elastic_resize_interval_s=0", "debug.fail_at_steps=[4]",
            "debug.fail_mode=hang", "run.max_failures=3"])
        init_ray(cfg)
        marker = cfg.run_dir() / "faults" / "step_4.fired"
        watcher = threading.Thread(target=_remove_node_when, args=(marker, cluster, second, stop, removed))
        watcher.start()
        try:
            result = fit(cfg, table)
        finally:
            stop.set()
            watcher.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    a = load_state(latest_checkpoint_dir(result.run_dir))
    b = load_state(sorted((tmp_path / "ref" / "checkpoints").iterdir())[-1])
    diff = max(float((a["student"][k].double() - b["student"][k].double()).abs().max())
               for k in b["student"] if b["student"][k].is_floating_point())
    return {"removed": removed == [True], "final_step": result.metrics["step"], "steps": [a["step"], b["step"]],
            "world_size": a["world_size"], "max_weight_diff": diff}


def test_elastic_group_shrinks_when_a_node_goes_and_ends_like_one_worker(tmp_path, small_folder):
    from ray._common.utils import get_ray_address_file

    address_file = Path(get_ray_address_file(None))
    address_before = address_file.read_text() if address_file.exists() else None
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the nodes and the driver use this cluster only
    env.update(RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    try:
        proc = subprocess.run([sys.executable, __file__, str(small_folder), str(tmp_path)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=1500)
    finally:  # `Cluster` writes Ray's current-cluster file: leave it as it was
        if address_before is not None:
            address_file.write_text(address_before)
        else:
            address_file.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["removed"]
    assert "[rob_ray] debug: injected failure (hang) on rank 0 during step 4" in out
    assert "[rob_ray] resumed from step 2" in out
    assert "[rob_ray] workers 2 -> 1 at step 2 (global batch 8 kept: 8 images per worker)" in out
    assert r["final_step"] == 6 and r["steps"] == [6, 6] and r["world_size"] == 1
    assert r["max_weight_diff"] < 1e-4  # 2 then 1 workers vs 1 worker: the same global batch, other float sums


if __name__ == "__main__":
    print(json.dumps(shrink_run(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
