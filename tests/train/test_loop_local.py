"""The training loop without Ray: checkpoints, resume at the saved step, learning on a fixed batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rob_ray.config import load_config
from rob_ray.data import MultiCropMapper, SampleSchedule, build_policy, scan_images
from rob_ray.train import LocalContext, load_state
from rob_ray.train.loop import train_loop
from rob_ray.train.schedules import cosine_schedule
from tests.conftest import tiny_overrides


def _run(cfg, table, run_dir):
    ctx = LocalContext(table, run_dir, num_to_keep=cfg.run.num_to_keep)
    return ctx, train_loop(cfg, ctx, len(table))


def test_checkpoints_and_resume_at_saved_step(small_folder, tmp_path):
    table = scan_images(small_folder)  # 48 images / batch 8 = 6 steps per epoch
    base = tiny_overrides(small_folder, tmp_path, "r") + ["run.checkpoint_every_steps=4", "run.num_to_keep=3"]
    cfg = load_config(None, [*base, "optim.max_steps=4"])
    ctx, m1 = _run(cfg, table, tmp_path / "r")
    assert m1["step"] == 4 and [p.name for p in ctx.checkpoints.list()] == ["step_00000004"]
    saved = load_state(ctx.checkpoints.list()[-1])
    assert saved["step"] == 4 and saved["config"]["student"]["arch"] == "test_resnet"

    cfg2 = load_config(None, base)  # same run name, no step cap: resumes and finishes 2 epochs
    ctx2, m2 = _run(cfg2, table, tmp_path / "r")
    assert m2["step"] == 12
    assert [p.name for p in ctx2.checkpoints.list()] == ["step_00000004", "step_00000006", "step_00000012"] or \
        [p.name for p in ctx2.checkpoints.list()][-1] == "step_00000012"
    steps = [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4] and steps[4] == 5  # the second launch started at step 5, not 1


@pytest.mark.parametrize("crops_on", ["worker", "data_actors"])
def test_resumed_run_equals_uninterrupted_run(small_folder, tmp_path, crops_on):
    table = scan_images(small_folder)
    base = tiny_overrides(small_folder, tmp_path, "a") + ["run.checkpoint_every_steps=3", f"augment.crops_on={crops_on}"]
    _, full = _run(load_config(None, base), table, tmp_path / "a")
    base_b = tiny_overrides(small_folder, tmp_path, "b") + ["run.checkpoint_every_steps=3", f"augment.crops_on={crops_on}"]
    _run(load_config(None, [*base_b, "optim.max_steps=3"]), table, tmp_path / "b")
    _, resumed = _run(load_config(None, base_b), table, tmp_path / "b")
    a = load_state(sorted((tmp_path / "a" / "checkpoints").iterdir())[-1])["student"]
    b = load_state(sorted((tmp_path / "b" / "checkpoints").iterdir())[-1])["student"]
    assert resumed["step"] == full["step"] == 12
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)  # bitwise on CPU


def test_bf16_on_cpu_resumes_bitwise_at_the_crop_sizes_preflight_accepts(small_folder, tmp_path):
    """Where no student conv gets a 1-pixel input (the case preflight refuses: torch's CPU bf16 conv backward
    returns garbage there), a bf16 run on CPU is as reproducible as an fp32 one: resumed equals uninterrupted."""
    from rob_ray.checks.preflight import check_cpu_bf16
    from rob_ray.methods import build_models

    table = scan_images(small_folder)
    bf16 = ["run.precision=bf16", "augment.global_size=64", "augment.local_size=64", "run.checkpoint_every_steps=3"]
    check_cpu_bf16(load_config(None, [*tiny_overrides(small_folder, tmp_path), *bf16]),
                   build_models(load_config(None, tiny_overrides(small_folder, tmp_path)))[1])  # accepted
    _, full = _run(load_config(None, [*tiny_overrides(small_folder, tmp_path, "a"), *bf16]), table, tmp_path / "a")
    base_b = [*tiny_overrides(small_folder, tmp_path, "b"), *bf16]
    _run(load_config(None, [*base_b, "optim.max_steps=3"]), table, tmp_path / "b")
    _, resumed = _run(load_config(None, base_b), table, tmp_path / "b")
    assert resumed["step"] == full["step"] == 12 and resumed["nonfinite_steps"] == full["nonfinite_steps"] == 0
    a = load_state(sorted((tmp_path / "a" / "checkpoints").iterdir())[-1])["student"]
    b = load_state(sorted((tmp_path / "b" / "checkpoints").iterdir())[-1])["student"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


class _FixedBatch(LocalContext):
    def batches(self, policy, schedule, start_step, end_step):
        batch = next(MultiCropMapper(self.table, policy, schedule, 0).iter_local(0, 1))
        return (batch for _ in range(start_step, end_step))


def test_loss_falls_when_overfitting_a_fixed_batch(small_folder, tmp_path):
    table = scan_images(small_folder)
    cfg = load_config(None, tiny_overrides(small_folder, tmp_path, "o") + [
        "optim.epochs=5", "optim.lr=0.3", "optim.clip_grad=null", "method.teacher_temp=1.0"])
    ctx = _FixedBatch(table, tmp_path / "o")
    train_loop(cfg, ctx, len(table))
    rows = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < np.mean(losses[:3]) - 1.0, losses
    # The loss cannot go below the teacher's entropy; the part the student controls is the KL.
    kl = [r["kl_teacher_student"] for r in rows]
    assert np.mean(kl[-5:]) < 0.5 * np.mean(kl[:3]), kl


def test_metrics_have_every_documented_field(small_folder, tmp_path):
    table = scan_images(small_folder)
    cfg = load_config(None, tiny_overrides(small_folder, tmp_path, "m") + ["optim.max_steps=2"])
    _run(cfg, table, tmp_path / "m")
    row = json.loads((tmp_path / "m" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("loss", "lr", "img_per_s", "data_wait_frac", "teacher_entropy", "student_entropy",
                "kl_teacher_student", "skipped_images", "eta_s", "epoch", "step"):
        assert key in row, key
    assert 0 <= row["data_wait_frac"] <= 1 and row["teacher_entropy"] >= 0 and row["kl_teacher_student"] >= -1e-6
    assert any((tmp_path / "m" / "tensorboard").iterdir())


def test_cosine_schedule_shape():
    s = cosine_schedule(1.0, 0.1, total_steps=20, warmup_steps=5)
    assert len(s) == 20 and s[0] == 0 and s[5] == 1.0
    assert np.all(np.diff(s[:6]) > 0) and np.all(np.diff(s[5:]) <= 0)
    assert abs(s[-1] - 0.1) < 0.01


def test_policy_schedule_batch_layout(small_folder):
    sizes = ["augment.global_size=32", "augment.local_size=16", "augment.num_local=3"]
    table = scan_images(small_folder)
    schedule = SampleSchedule(len(table), 1, 8, 1)
    cfg = load_config(None, [*sizes, "augment.crops_on=data_actors"])
    batch = next(MultiCropMapper(table, build_policy(cfg.augment), schedule, 0).iter_local(2, 3))
    assert batch["global"].shape == (8, 2, 3, 32, 32) and batch["local"].shape == (8, 3, 3, 16, 16)
    assert np.array_equal(batch["image_index"], schedule.lookup(0, np.arange(16, 24))[1])
    cfg = load_config(None, [*sizes, "augment.image_size=128", "augment.crops_on=worker"])  # decoded images + draws
    batch = next(MultiCropMapper(table, build_policy(cfg.augment), schedule, 0).iter_local(2, 3))
    assert batch["image"].shape == (8, 3, 128, 128) and batch["draws"].shape == (8, 5, 18) and "global" not in batch
    assert np.array_equal(batch["image_index"], schedule.lookup(0, np.arange(16, 24))[1])
