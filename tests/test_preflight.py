"""The teacher-fits-beside-the-student check: measured activations, the error and its suggested batch."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from rob_ray.checks.memory import MEMORY_BUDGET
from rob_ray.checks.memory import saved_bytes_per_image as _saved_bytes_per_image
from rob_ray.checks.preflight import check_teacher_fits, estimate_worker_memory, preflight
from rob_ray.config import ConfigError, load_config
from rob_ray.models import build_student, build_teacher
from tests.conftest import tiny_overrides


class _FlatStudent(nn.Module):
    """Linear on the flattened crop, then ReLU: autograd keeps exactly the input and the ReLU output."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * size * size, dim)

    def forward(self, crops):
        return torch.relu(self.fc(torch.cat(crops).flatten(1)))


def test_saved_activation_bytes_match_a_hand_count():
    size, dim = 8, 5
    got = _saved_bytes_per_image(_FlatStudent(size, dim), size, dtype=None)
    assert got == (3 * size * size + dim) * 4  # fp32 input + ReLU output per image; weights not counted


def _models(cfg):
    teacher = build_teacher(cfg.teacher)
    return teacher, build_student(cfg.student, out_dim=teacher.num_prototypes)


def test_too_small_gpu_names_the_shortfall_and_a_batch_that_fits(small_folder, tmp_path):
    base = tiny_overrides(small_folder, tmp_path) + ["scaling.use_gpu=true"]
    cfg = load_config(None, base)
    teacher, student = _models(cfg)
    est = estimate_worker_memory(cfg, teacher, student)
    have = est["fixed"] + 3.5 * est["per_image"]  # room for 3 images per step, not 4
    with pytest.raises(ConfigError) as err:
        check_teacher_fits(cfg, teacher, student, gpu_memory_gb=have / MEMORY_BUDGET)
    msg = str(err.value)
    assert "\n" not in msg and "does not fit beside student 'test_resnet'" in msg
    short = float(re.search(r"short by ([\d.]+) GiB", msg).group(1))
    assert short == pytest.approx(est["total"] - have, abs=0.06)
    assert "lower optim.batch_size to 3" in msg
    # The suggestion is right when the estimate is re-measured at that batch size.
    at3 = estimate_worker_memory(load_config(None, [*base, "optim.batch_size=3"]), teacher, student)["total"]
    at4 = estimate_worker_memory(load_config(None, [*base, "optim.batch_size=4"]), teacher, student)["total"]
    assert at3 <= have < at4


def test_gpu_fraction_and_the_plan(small_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # planned on a CPU driver for a cluster with GPU nodes
    base = tiny_overrides(small_folder, tmp_path) + ["scaling.use_gpu=true", "scaling.gpu_memory_gb=80"]
    pre = preflight(load_config(None, base))
    assert pre.plan["gpu_memory_available_gib"] == 80 * MEMORY_BUDGET and 1.0 < pre.plan["gpu_memory_needed_gib"] < 2.0
    assert pre.plan["memory_est_GiB"] == pre.plan["gpu_memory_needed_gib"]  # one estimate
    half = preflight(load_config(None, [*base, "scaling.gpus_per_worker=0.5"]), table=pre.table)
    assert half.plan["gpu_memory_available_gib"] == 40 * MEMORY_BUDGET


def test_unknown_gpu_size_skips_the_check(small_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(None, tiny_overrides(small_folder, tmp_path) + ["scaling.use_gpu=true"])
    teacher, student = _models(cfg)
    assert "skipped" in check_teacher_fits(cfg, teacher, student)["gpu_memory_check"]


def test_convs_on_one_pixel_follow_the_arithmetic():
    from rob_ray.precision import convs_on_one_pixel

    # size s: the stride-2 conv makes ceil(s / 2) pixels, which the 3x3 conv then sees; the 1x1 conv never counts
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1))
    net.train()
    assert convs_on_one_pixel(net, [4, 2, 1]) == [("1", 2, (3, 3)), ("0", 1, (3, 3)), ("1", 1, (3, 3))]
    assert convs_on_one_pixel(net, [8, 4]) == [] and net.training  # left in training mode


def test_bf16_on_cpu_refuses_crops_that_give_a_conv_one_pixel(small_folder, tmp_path):
    base = tiny_overrides(small_folder, tmp_path)  # 32 / 16 px crops: the test ResNet's layer 4 sees 1 pixel at both
    with pytest.raises(ConfigError) as err:
        preflight(load_config(None, [*base, "run.precision=bf16"]))
    msg = str(err.value)
    assert "\n" not in msg and "run.precision = bf16 on CPU workers" in msg
    # the largest crop size that hits one is named, and twice it as the smallest that avoids it
    assert re.search(r"layer4\.0\.conv\d \(3x3 kernel\) gets a 1-pixel input from 32 px crops", msg), msg
    assert "run.precision=fp32" in msg and "at least 64 px" in msg
    pre = preflight(load_config(None, [*base, "run.precision=fp32"]))  # fp32: no such limit
    bigger = [*base, "run.precision=bf16", "augment.num_local=0", "augment.global_size=64"]
    preflight(load_config(None, bigger), table=pre.table)  # no layer sees a single pixel at 64 px: accepted
    gpu = [*base, "run.precision=bf16", "scaling.use_gpu=true"]
    from rob_ray.checks.preflight import check_cpu_bf16

    check_cpu_bf16(load_config(None, gpu), pre.student)  # GPU workers: the CPU kernel is not used
