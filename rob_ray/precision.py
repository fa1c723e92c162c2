"""The precision a worker computes in (plain torch: the GPU benchmark box imports it without Ray).

`run.precision=auto` is bf16 autocast on a GPU and fp32 on a CPU. A CPU with native bf16 (AVX512-BF16 or
AMX: `cpu_computes_bf16`) steps ~1.5x faster with `run.precision=bf16`, but it stays opt-in there: rob_ray's
CPU training in bf16 is not bitwise reproducible yet (README "Performance"), and fp32 is, which resume and
the world-size guarantees rely on. Only the models' forward passes run under autocast: data work (crops,
colour ops) stays in its own precision wherever it is called from (`outside_autocast`), so a run's views
do not depend on it.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

__all__ = ["CPU_BF16_FLAGS", "convs_on_one_pixel", "cpu_computes_bf16", "outside_autocast", "uses_bf16"]

# x86 CPU flags (as Linux's /proc/cpuinfo names them) of native bf16 matrix maths, which oneDNN uses for
# convolutions and matmuls under CPU autocast: AVX512-BF16 (Cooper Lake, Zen 4 and later), AMX (Sapphire
# Rapids). `experiments/bench_pipeline.py` records the answer beside its rates.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def uses_bf16(precision: str, on_gpu: bool) -> bool:
    """The one rule: `bf16` always; `fp32` never; `auto` = bf16 on a GPU, fp32 on a CPU."""
    return precision == "bf16" or (precision == "auto" and on_gpu)


def cpu_computes_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has native bf16 matrix instructions (`CPU_BF16_FLAGS`): torch's own CPU probe
    where it has one, else the flags in `cpuinfo` (Linux); False when neither can tell."""
    if str(cpuinfo) == "/proc/cpuinfo":
        return _this_cpu_computes_bf16()
    return _flags_say_bf16(cpuinfo)


@functools.cache
def _this_cpu_computes_bf16() -> bool:
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        if all(callable(p) for p in probes):
            return any(bool(p()) for p in probes)
    except RuntimeError:  # a build without the probe's CPU backend: read the flags instead
        pass
    return _flags_say_bf16("/proc/cpuinfo")


def _flags_say_bf16(cpuinfo: str | Path) -> bool:
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":  # every core lists the same flags: the first line decides
            return any(flag in value.split() for flag in CPU_BF16_FLAGS)
    return False


def outside_autocast() -> contextlib.ExitStack:
    """A context that turns off whichever autocast is on here (CPU, CUDA), restored on exit."""
    stack = contextlib.ExitStack()
    for device in ("cpu", "cuda"):
        if torch.is_autocast_enabled(device):
            stack.enter_context(torch.autocast(device, enabled=False))
    return stack


def convs_on_one_pixel(model: torch.nn.Module, sizes: list[int]) -> list[tuple[str, int, tuple[int, int]]]:
    """(name, input size in px, kernel) of every Conv2d with a kernel wider than 1 that gets a 1-pixel-high or
    -wide input when `model` sees square `sizes` (one forward on zeros, 2 images per size, no grad).

    Why: torch's CPU bf16 convolution backward leaves such a layer's weight gradient partly unwritten (NaN,
    inf or 1e10 at random: measured with torch 2.14.1 on AVX512-BF16, README "Performance";
    `experiments/check_cpu_bf16_conv.py` checks a torch build), so bf16 CPU training refuses those sizes."""
    found: dict[tuple[str, int], tuple[int, int]] = {}
    current: list[int] = []

    def hook(name: str, conv: torch.nn.Conv2d):
        def pre(_module: torch.nn.Module, args: tuple) -> None:
            h, w = args[0].shape[-2:]
            kh, kw = conv.kernel_size
            if (h == 1 and kh > 1) or (w == 1 and kw > 1):
                found.setdefault((name, current[0]), (kh, kw))
        return pre

    handles = [m.register_forward_pre_hook(hook(n, m)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Conv2d)]
    was_training = model.training
    try:
        model.eval()  # BatchNorm's running statistics stay as they are
        with torch.no_grad():
            for size in sizes:
                current[:] = [size]
                model(torch.zeros(2, 3, size, size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(name, size, kernel) for (name, size), kernel in found.items()]
