"""The new objectives on a real local Ray: RoB-SwAV on 2 DDP workers (distributed Sinkhorn, Ray Data
actors), then KD and DINO-from-scratch on one worker, all in one Ray session (~1 minute on 2 cores)."""

from __future__ import annotations

import json

import pytest
import torch

from rob_ray.config import load_config
from rob_ray.train import load_state
from rob_ray.train.launch import fit, latest_checkpoint_dir
from tests.conftest import tiny_overrides
from tests.helpers_ckpt import write_swav_checkpoint, write_timm_classifier
from tests.train.test_ray_e2e import TWO_WORKERS

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_session():
    import ray

    yield
    ray.shutdown()


def test_swav_kd_and_scratch_on_local_ray(small_folder, tmp_path, ray_session):
    swav = write_swav_checkpoint(tmp_path / "swav.pth")
    base = ["optim.max_steps=2", "run.checkpoint_every_steps=2"]
    runs = {
        "swav": TWO_WORKERS + ["method.name=swav", "teacher.kind=swav", f"teacher.checkpoint={swav}",
                               "method.queue_length=8"],
        "kd": ["scaling.num_workers=1", "scaling.cpus_per_worker=0.5", "data.cpus_per_actor=0.5", "scaling.ray_num_cpus=2",
               "method.name=kd", "teacher.kind=timm", "teacher.arch=test_resnet",
               f"teacher.checkpoint={write_timm_classifier(tmp_path / 'cls.pth', num_classes=1000)}"],
        "dino_scratch": ["scaling.num_workers=1", "scaling.cpus_per_worker=0.5", "data.cpus_per_actor=0.5",
                         "scaling.ray_num_cpus=2", "method.name=dino_scratch", "method.out_dim=32"],
    }
    for name, extra in runs.items():
        result = fit(load_config(None, tiny_overrides(small_folder, tmp_path, name) + base + extra))
        assert result.metrics["step"] == 2, name
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] for r in rows), name
        state = load_state(latest_checkpoint_dir(result.run_dir))
        if name == "swav":  # 2 steps x 2 workers x 8 images went through the one global queue of 8 rows per view
            assert state["method"]["loss.queue_count"] == 32
            assert torch.count_nonzero(state["method"]["loss.queue"].abs().sum(-1)) == 2 * 8
            assert "method_ranks" not in state  # every worker holds the same queue: rank 0's is the run's
        if name == "dino_scratch":  # the EMA teacher and the centre travel in the checkpoint
            assert "loss.center" in state["method"] and any(k.startswith("ema.") for k in state["method"])
            assert float(state["method"]["loss.center"].abs().sum()) > 0
