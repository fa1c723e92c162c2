"""Each new objective trains end to end through the real loop (no Ray) with the loss falling on a fixed batch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.train.loop import train_loop
from tests.conftest import tiny_overrides
from tests.helpers_ckpt import write_swav_checkpoint, write_timm_classifier
from tests.train.test_loop_local import _FixedBatch


def _overrides(name, tmp_path):
    if name == "swav":
        ckpt = write_swav_checkpoint(tmp_path / "swav.pth")
        return ["method.name=swav", "teacher.kind=swav", f"teacher.checkpoint={ckpt}", "method.epsilon=0.05"]
    if name == "swav_own":
        ckpt = write_swav_checkpoint(tmp_path / "swav.pth")
        return ["method.name=swav", "teacher.kind=swav", f"teacher.checkpoint={ckpt}", "method.prototypes=student",
                "method.teacher_views=1", "method.queue_length=16", "method.epsilon=0.05"]
    if name == "kd":
        ckpt = write_timm_classifier(tmp_path / "cls.pth", num_classes=1000)
        return ["method.name=kd", "teacher.kind=timm", "teacher.arch=test_resnet", f"teacher.checkpoint={ckpt}",
                "method.alpha=0.5", "method.temperature=4"]
    if name == "dino_scratch":
        return ["method.name=dino_scratch", "method.out_dim=64", "method.warmup_teacher_temp_epochs=0"]
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["swav", "swav_own", "kd", "dino_scratch"])
def test_loss_falls_on_a_fixed_batch(small_folder, tmp_path, name):
    table = scan_images(small_folder)
    cfg = load_config(None, tiny_overrides(small_folder, tmp_path, name) + _overrides(name, tmp_path) + [
        "optim.epochs=3", "optim.lr=0.05", "optim.clip_grad=null", "run.checkpoint_every_steps=100"])
    train_loop(cfg, _FixedBatch(table, tmp_path / name), len(table))
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 18 and all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:3]) - 0.05 * abs(np.mean(losses[:3])), losses
