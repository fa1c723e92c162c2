"""Timing of the training step: per-stage device times, stage wrappers, FLOP counting and MFU.

- `StageClock`: per-stage times (CUDA events on GPU, read only at logging steps; perf_counter on CPU);
- `Timed`: wraps the teacher / student callables so their stages are timed inside a method's step;
- `allreduce_timing_hook`: a DDP comm hook that times the gradient all-reduce;
- `flops_per_image` / `mfu`: FLOPs of one training image (teacher forward on the global views,
  student forward + backward on all views), counted once at start-up with FlopCounterMode;
- `time_calls`: seconds per call of a callable after warm-up (what the benchmarks report);
- `matmul_flop_rate`: what a large matrix product reaches on this device and thread count, the
  yardstick a step's FLOP rate is read against.

Plain torch: no Ray, no config import (the GPU benchmark box has neither).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rob_ray.data.policy import CropPolicy
from rob_ray.methods.base import Views

__all__ = ["StageClock", "Timed", "allreduce_timing_hook", "flops_per_image", "matmul_flop_rate", "mfu", "sync",
           "time_calls"]


class StageClock:
    """Accumulates device time per named stage between `collect()` calls.

    On CUDA each start/stop records an event on the current stream (no sync); `collect()`
    synchronises once and sums the intervals — call it only at logging steps. On CPU the work is
    synchronous, so host timestamps are the stage times.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._open: dict[str, Any] = {}
        self._pending: list[tuple[str, Any, Any]] = []
        self._totals: dict[str, float] = defaultdict(float)

    def _now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start(self, name: str) -> None:
        self._open[name] = self._now()

    def stop(self, name: str) -> None:
        t0 = self._open.pop(name, None)
        if t0 is not None:
            self._pending.append((name, t0, self._now()))

    def add(self, name: str, seconds: float) -> None:
        """A host-measured duration (e.g. data wait)."""
        self._totals[name] += seconds

    def collect(self) -> dict[str, float]:
        """Seconds per stage since the last call."""
        if self.cuda and self._pending:
            torch.cuda.synchronize()
        for name, t0, t1 in self._pending:
            self._totals[name] += (t0.elapsed_time(t1) / 1000.0) if self.cuda else (t1 - t0)
        out = dict(self._totals)
        self._pending, self._totals = [], defaultdict(float)
        return out


class Timed:
    """`fn(*args)` inside `clock.start(name)` / `clock.stop(name)`; `stop=False` leaves the stage
    open for the caller to close (the student's stage ends after backward, in the loop)."""

    def __init__(self, fn: Callable, clock: StageClock, name: str, stop: bool = True) -> None:
        self.fn, self.clock, self.name, self.stop = fn, clock, name, stop

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.clock.start(self.name)
        out = self.fn(*args, **kwargs)
        if self.stop:
            self.clock.stop(self.name)
        return out


def allreduce_timing_hook(clock: StageClock, name: str = "allreduce") -> Callable:
    """A DDP comm hook: the default all-reduce (averaged), with each bucket's time from launch to
    completion added to `name` (host-measured; buckets overlap backward and each other)."""
    import torch.distributed as dist

    def hook(state, bucket):  # unannotated: DDP rejects annotations other than its own types
        t0 = time.perf_counter()
        tensor = bucket.buffer().div_(dist.get_world_size())
        fut = dist.all_reduce(tensor, async_op=True).get_future()

        def done(f: torch.futures.Future) -> torch.Tensor:
            clock.add(name, time.perf_counter() - t0)
            return f.value()[0]

        return fut.then(done)

    return hook


def flops_per_image(method: nn.Module, teacher: nn.Module, student: nn.Module, policy: CropPolicy,
                    device: torch.device, autocast: Callable = contextlib.nullcontext, batch: int = 2) -> float:
    """FLOPs of one image's training step: teacher forward on its global views + student forward
    and backward on all views + the loss (FlopCounterMode, counted once at start-up).

    Runs on a copy of the student (BN statistics of the real one stay untouched) and with the
    method in eval mode (no centre update).
    """
    from torch.utils.flop_counter import FlopCounterMode

    p = policy
    gen = torch.Generator().manual_seed(0)

    def crops(n: int, size: int) -> torch.Tensor:
        return torch.randn(n * batch, 3, size, size, generator=gen).to(device)

    locals_ = crops(p.num_local, p.local_size) if p.num_local else None
    # Class 0 labels: a supervised objective (kd) refuses unlabelled images, and counting needs none.
    views = Views(crops(p.num_global, p.global_size), locals_, torch.zeros(batch, dtype=torch.long, device=device),
                  batch, p.num_global)
    student_copy = copy.deepcopy(student).train()
    was_training = method.training
    method.eval()
    # fork_rng: methods that draw masks from torch's RNG must not shift the run's random stream
    # (this runs after a resumed run restored its RNG state).
    devices = [device] if torch.device(device).type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
            with autocast():
                out = method(views, teacher, student_copy, 0)
            out.loss.backward()
    finally:
        method.train(was_training)
    return counter.get_total_flops() / batch


def mfu(images_per_s: float, flops_image: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the configured peak (None without a peak)."""
    if not peak_tflops or not flops_image:
        return None
    return images_per_s * flops_image / (peak_tflops * 1e12)


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn: Callable[[int], Any], calls: int, warmup: int, device: torch.device,
               clock: StageClock | None = None) -> tuple[float, list[Any]]:
    """Seconds per call of `fn(i)` over `calls` calls after `warmup` untimed ones (device synced
    around the timed calls only), and the warm-up results. With a clock, its stages are emptied
    after the warm-up, so it then holds the timed window only."""
    first = [fn(i) for i in range(warmup)]
    sync(device)
    if clock is not None:
        clock.collect()
    t0 = time.perf_counter()
    for i in range(calls):
        fn(warmup + i)
    sync(device)
    return (time.perf_counter() - t0) / max(calls, 1), first


def matmul_flop_rate(device: torch.device, n: int = 2048, calls: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an (n x n) @ (n x n) product on `device` with torch's current threads, the best of
    `calls` after two untimed ones: about the device's peak for `dtype` (a CPU's FMA units, a GPU's
    tensor cores), measured rather than read from a data sheet."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(calls + 2):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        seconds = time.perf_counter() - t0
        if i >= 2:  # the first two pay for allocation and the threads' start
            best = min(best, seconds)
    return 2 * n**3 / best
