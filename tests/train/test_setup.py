"""The set-up both training loops share (rob_ray/train/setup.py), against hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from rob_ray.config import load_config
from rob_ray.train.setup import optim_schedules, resume_position, step_range


def _ctx(rank=0, world_size=1):
    return SimpleNamespace(rank=rank, world_size=world_size)


@pytest.mark.parametrize("world_size", [1, 2])
def test_step_range_splits_one_global_batch_and_stops_at_max_steps(world_size):
    cfg = load_config(None, ["optim.batch_size=8", "optim.epochs=3", "optim.warmup_epochs=1"])
    steps = step_range(cfg, _ctx(world_size=world_size), num_images=100)
    assert steps.global_batch == 8 * world_size and steps.spe == 100 // (8 * world_size)
    assert steps.total == steps.end == 3 * steps.spe
    assert steps.share == 1.0  # an even split: DDP's gradient average is the global batch's mean as it is
    cut = step_range(load_config(None, ["optim.batch_size=8", "optim.epochs=3", "optim.warmup_epochs=1",
                                        "optim.max_steps=5"]), _ctx(world_size=world_size), 100)
    assert (cut.total, cut.end) == (steps.total, 5)  # schedules still span the whole run


def test_optim_schedules_scale_lr_per_256_images_with_warmup():
    cfg = load_config(None, ["optim.batch_size=64", "optim.epochs=4", "optim.warmup_epochs=1", "optim.lr=0.004",
                             "optim.min_lr=0", "optim.weight_decay=0.04", "optim.weight_decay_end=0.4"])
    steps = step_range(cfg, _ctx(), num_images=640)  # 10 steps per epoch, 40 in all
    lr, wd = optim_schedules(cfg.optim, steps)
    assert len(lr) == len(wd) == 40
    peak = 0.004 * 64 / 256
    np.testing.assert_allclose(lr[:10], peak * np.arange(10) / 10)  # linear warm-up over the first epoch
    assert lr[10] == pytest.approx(peak) and lr[-1] < lr[11] < peak and np.all(np.diff(lr[10:]) < 0)
    assert wd[0] == pytest.approx(0.04) and 0.3 < wd[-1] <= 0.4 and np.all(np.diff(wd) > 0)


def test_resume_position_counts_skipped_images_on_rank_zero_only(capsys):
    cfg = load_config(None, ["optim.batch_size=8", "optim.epochs=2", "optim.warmup_epochs=0"])
    state = {"step": 7, "skipped_images": 3, "world_size": 1}
    assert resume_position(state, _ctx(rank=0), step_range(cfg, _ctx(), 40), "2 students ") == (7, 3)
    assert "resumed 2 students from step 7 (epoch 1)" in capsys.readouterr().out
    steps2 = step_range(cfg, _ctx(rank=1, world_size=2), 40)
    assert resume_position(state, _ctx(rank=1, world_size=2), steps2) == (7, 0)
    assert capsys.readouterr().out == ""
