"""Pieces of the fast training step, kept out of the loop so that benchmarks use them too:

- `StageClock`: per-stage times (CUDA events on GPU, read only at logging steps; perf_counter on CPU);
- `Timed`: wraps the teacher / student callables so their stages are timed inside a method's step;
- `DevicePrefetcher`: pins the next host batch and copies it on a side CUDA stream while the
  current step computes;
- `GpuViews`: augment.device=gpu — the batch's decoded images become normalised views on the device;
- `flops_per_image` / `mfu`: FLOPs of one training image (teacher forward on the global views,
  student forward + backward on all views), counted once at start-up with FlopCounterMode.

Plain torch: no Ray, no config import (the GPU benchmark box has neither).
"""

from __future__ import annotations

import contextlib
import copy
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from rob_ray.data.batched_augment import BatchedMultiCrop
from rob_ray.data.policy import CropPolicy
from rob_ray.methods.base import Views

__all__ = ["DevicePrefetcher", "GpuViews", "StageClock", "Timed", "allreduce_timing_hook", "flops_per_image", "host_tensor",
           "mfu",
           "step_generator"]


def host_tensor(x: Any) -> torch.Tensor:
    """A batch column as a tensor. Ray Data hands out read-only numpy views, which torch would
    wrap with a warning: those get one cheap copy (uint8 crops, labels)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = np.array(x)
    return torch.as_tensor(x)


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


class DevicePrefetcher:
    """Wraps an iterator of host batches (dicts of numpy arrays): yields the same dicts with
    `keys` replaced by device tensors. On CUDA the next batch is pinned and copied on a side
    stream while the caller computes on the current one (a pageable copy would also sync the
    stream); on CPU the tensors share the numpy memory."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], device: torch.device, keys: tuple[str, ...]) -> None:
        self.it, self.device, self.keys = iter(batches), torch.device(device), keys
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._next: dict | None = None
        self._done = False

    def _load(self) -> dict | None:
        try:
            host = next(self.it)
        except StopIteration:
            return None
        if not self.cuda:
            return {**host, **{k: torch.as_tensor(np.asarray(host[k])) for k in self.keys}}
        with torch.cuda.stream(self.stream):
            dev = {k: torch.as_tensor(np.asarray(host[k])).pin_memory().to(self.device, non_blocking=True)
                   for k in self.keys}
        return {**host, **dev}

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> dict:
        if self._next is None and not self._done:
            self._next = self._load()
        current = self._next
        if current is None:
            self._done = True
            raise StopIteration
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            for k in self.keys:
                current[k].record_stream(torch.cuda.current_stream(self.device))  # the side stream must not reuse it early
        self._next = self._load()  # starts the next copy now, overlapping this step's compute
        return current


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The CPU generator of one step's augmentation draws: a pure function of (seed, rank, step),
    so a resumed run makes the same views."""
    key = zlib.crc32(np.asarray([seed & 0xFFFFFFFF, rank, step], dtype=np.int64).tobytes())
    return torch.Generator().manual_seed((int(seed) & 0xFFFFFFFF) * 1_000_003 + key)


class GpuViews:
    """augment.device=gpu: a batch of decoded images (`image` (B, 3, R, R) uint8, `size` (B, 2))
    -> the step's `Views`, cropped and normalised on the device.

    Unreadable images are replaced by a readable one of the same batch, so the compiled step
    keeps its static shapes; the count is returned so the loop reports them as skipped.
    """

    def __init__(self, policy: CropPolicy, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 seed: int, rank: int = 0, channels_last: bool = False) -> None:
        self.augment = BatchedMultiCrop(policy, mean, std, channels_last=channels_last)
        self.policy, self.device, self.seed, self.rank = policy, torch.device(device), seed, rank

    def __call__(self, batch: dict[str, Any], step: int) -> tuple[Views, int]:
        """`batch`: host numpy `valid` and `size`; `image` (and `label`) already on the device
        (DevicePrefetcher) or host arrays."""
        valid = np.asarray(batch["valid"], dtype=bool)
        n_bad = int((~valid).sum())  # host numpy: no device sync
        images = host_tensor(batch["image"]).to(self.device)
        sizes = torch.as_tensor(np.asarray(batch["size"]))
        labels = host_tensor(batch["label"])
        if 0 < n_bad < len(valid):
            good = np.flatnonzero(valid)
            rows = torch.as_tensor(np.where(valid, np.arange(len(valid)), good[np.arange(len(valid)) % len(good)]))
            images, sizes = images[rows.to(images.device)], sizes[rows]
            labels = labels.clone()
            labels[torch.as_tensor(~valid).to(labels.device)] = -1
        globals_, locals_ = self.augment(images, sizes, step_generator(self.seed, self.rank, step))
        return Views(globals_, locals_, labels.to(self.device), len(valid),
                     self.policy.num_global), n_bad


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
