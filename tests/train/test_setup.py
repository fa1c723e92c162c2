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


# ---------------------------------------------------------------- precision: `auto` follows the hardware

_CPUINFO = "processor\t: {n}\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 {extra}\nbogomips\t: 4800\n\n"


@pytest.mark.parametrize(("extra", "native"), [
    ("avx512f avx512_bf16 avx512_vnni", True),  # Zen 4 / Cooper Lake
    ("avx512f amx_tile amx_bf16 amx_int8", True),  # Sapphire Rapids
    ("avx512f avx512_vnni", False),  # AVX-512 without bf16: emulated, slower than fp32
    ("", False),
])
def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path, extra, native):
    from rob_ray.precision import cpu_computes_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("".join(_CPUINFO.format(n=n, extra=extra) for n in range(2)))
    assert cpu_computes_bf16(info) is native


def test_cpu_bf16_is_false_when_the_flags_cannot_be_read(tmp_path):
    from rob_ray.precision import cpu_computes_bf16

    assert cpu_computes_bf16(tmp_path / "missing") is False
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")  # no x86 flags line: not claimed
    assert cpu_computes_bf16(arm) is False


def test_precision_rule():
    from rob_ray.precision import uses_bf16

    for on_gpu in (False, True):
        assert uses_bf16("bf16", on_gpu) and not uses_bf16("fp32", on_gpu)
    # auto: bf16 on a GPU; fp32 on every CPU, native bf16 or not (CPU bf16 training is not bitwise reproducible)
    assert uses_bf16("auto", True) and not uses_bf16("auto", False)


@pytest.mark.parametrize(("precision", "bf16"), [("auto", False), ("fp32", False), ("bf16", True)])
def test_a_cpu_worker_computes_in_the_precision_the_rule_gives(precision, bf16):
    import torch

    import rob_ray.train.setup as setup

    before = torch.get_num_threads()
    try:
        cfg = load_config(None, [f"run.precision={precision}", "scaling.torch_threads=1"])
        dev = setup.device_setup(cfg, SimpleNamespace(device=torch.device("cpu")))
    finally:
        torch.set_num_threads(before)
    assert dev.use_bf16 is bf16
    with dev.autocast():  # the context the step runs its forward passes in
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == (torch.bfloat16 if bf16 else torch.float32)
