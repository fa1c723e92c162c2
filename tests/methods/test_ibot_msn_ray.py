"""RoB-iBOT and RoB-MSN end to end on a real local Ray: both stream from a Ray Data actor; iBOT trains
in one Ray Train worker, MSN in the driver (`scaling.num_workers=0`) to spare a second ~15 s
worker-group start on 2 cores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rob_ray.config import load_config
from rob_ray.train import load_state
from rob_ray.train.launch import fit
from tests.methods.test_ibot_msn_methods import RECIPES, tiny
from tests.ssl_checkpoints import write_ibot_checkpoint, write_msn_checkpoint

pytestmark = pytest.mark.ray

RAY = ["scaling.cpus_per_worker=1", "data.num_actors=1", "data.cpus_per_actor=0.5", "scaling.ray_num_cpus=2",
       "optim.max_steps=3", "run.checkpoint_every_steps=3"]
WORKERS = {"ibot": "scaling.num_workers=1", "msn": "scaling.num_workers=0"}


def test_ibot_and_msn_recipes_train_on_ray(small_folder, tmp_path):
    import ray

    ckpts = {"ibot": tmp_path / "checkpoint.pth", "msn": tmp_path / "msn.pth.tar"}
    write_ibot_checkpoint(ckpts["ibot"], k=32, hidden=48, bottleneck=24)
    write_msn_checkpoint(ckpts["msn"], timm_arch="test_vit", k=24, hidden=48, out=16)
    try:
        for method in ("ibot", "msn"):
            cfg = load_config(RECIPES[method], tiny(method, ckpts[method], small_folder, tmp_path / "runs", method)
                              + RAY + [WORKERS[method]])
            result = fit(cfg)
            rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows] == [1, 2, 3]
            assert all(np.isfinite(r["loss"]) for r in rows)
            key = "loss/patch" if method == "ibot" else "loss/ce"
            assert key in rows[-1]
            state = load_state(result.checkpoint_dir)
            assert state["step"] == 3 and ("mask_token" if method == "ibot" else "head.fc1.weight") in state["student"]
    finally:
        ray.shutdown()
