"""Host batches -> the step's normalised `Views`, for both crop placements, with one rule for
unreadable images; and the stream that builds step t+1's views while step t computes.

Placements (`CropPolicy.crops_on`):
- `worker`: the batch holds decoded images (`image`, `size`) and their per-view draws (`draws`,
  made by the data actors): the crops are made here, batched (`BatchedMultiCrop`), on the
  training device — CPU tensors or CUDA;
- `data_actors`: the batch holds uint8 views (`global`, `local`): here they are only moved and
  normalised.

Unreadable images (`valid` False), one rule for both: the batch keeps its shape (a compiled step
sees static shapes) — each unreadable row is filled with a readable row of the same batch — and
those rows contribute nothing to the update: `row_weight` is 0 for them and B / n_valid for the
others, and the step scales the gradient flowing back through each row of the student's output
by it, so the gradient is the mean over the readable images only. Their labels are -1. A batch
with no readable image keeps every rank's step in line and learns nothing (`loss_weight` 0).

Plain torch (no Ray, no config): the GPU benchmark box runs it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rob_ray.data.batched_augment import BatchedMultiCrop, params_from_draws
from rob_ray.data.policy import CropPolicy
from rob_ray.methods.base import Views

__all__ = ["BuiltViews", "ViewStream", "ViewsBuilder", "host_tensor", "image_keys", "stand_in_rows"]


def image_keys(seed: int, epochs: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(B,) int64 per-image random keys, a pure function of (seed, epoch, image index): the same image
    of the same epoch gets the same key on any rank, in any batch slot. (splitmix64 of the three.)"""
    with np.errstate(over="ignore"):
        x = (np.uint64(seed & 0xFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.asarray(epochs, dtype=np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             ^ np.asarray(images, dtype=np.uint64) * np.uint64(0x94D049BB133111EB))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(1)).astype(np.int64)


def host_tensor(x: Any) -> torch.Tensor:
    """A batch column as a tensor. Ray Data hands out read-only numpy views, which torch would
    wrap with a warning: those get one cheap copy (uint8 crops, labels)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = np.array(x)
    return torch.as_tensor(x)


def stand_in_rows(valid: np.ndarray) -> np.ndarray | None:
    """Row indexes that fill each unreadable row with a readable row of the same batch (the k-th
    unreadable row takes readable row k mod n_valid); None when every row, or none, is readable."""
    valid = np.asarray(valid, dtype=bool)
    good = np.flatnonzero(valid)
    if len(good) in (0, len(valid)):
        return None
    rows = np.arange(len(valid))
    rows[~valid] = good[np.arange(int((~valid).sum())) % len(good)]
    return rows


@dataclass
class BuiltViews:
    """One step's input: `views` on the device; `row_weight` (B,) float on the device or None (all
    readable); `n_bad` unreadable images; `loss_weight` 0.0 when none was readable, else 1.0."""

    views: Views
    row_weight: torch.Tensor | None
    n_bad: int
    loss_weight: float

    @property
    def tensors(self) -> list[torch.Tensor]:
        v = self.views
        return [t for t in (v.globals_, v.locals_, v.labels, self.row_weight) if t is not None]


class ViewsBuilder:
    """A host batch (dict of numpy arrays from the mapper) -> `BuiltViews` on `device`.

    Args:
        policy: the crop policy (its `crops_on` says which columns the batch has).
        mean, std: the teacher's normalisation (RGB in [0, 1]).
        channels_last: return channels_last crops (what CNNs run fastest on).
    """

    def __init__(self, policy: CropPolicy, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool = False, seed: int | None = None) -> None:
        self.policy, self.device, self.channels_last = policy, torch.device(device), channels_last
        self.seed = seed
        self.cuda = self.device.type == "cuda"
        self.augment = BatchedMultiCrop(policy, mean, std, channels_last=channels_last)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255.0
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None

    def _to_device(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = host_tensor(x)
        if not self.cuda:
            return t
        return t.pin_memory().to(self.device, non_blocking=True)  # pinned: the copy does not sync the stream

    def __call__(self, batch: dict[str, Any]) -> BuiltViews:
        valid = np.asarray(batch["valid"], dtype=bool)
        n, n_bad = len(valid), int((~valid).sum())  # host numpy: no device sync
        rows = stand_in_rows(valid)
        labels = np.array(batch["label"], dtype=np.int64)
        if rows is not None:
            labels[~valid] = -1
        if self.policy.crops_on == "worker":
            globals_, locals_ = self._crop(batch, rows, valid)
        else:
            globals_, locals_ = self._normalise_views(batch, rows)
        weight = None
        if 0 < n_bad < n:
            weight = self._to_device((valid * (n / (n - n_bad))).astype(np.float32))
        keys = None
        if self.seed is not None and "image_index" in batch and "epoch" in batch:
            keys = torch.from_numpy(image_keys(self.seed, np.asarray(batch["epoch"]), np.asarray(batch["image_index"])))
        views = Views(globals_, locals_, self._to_device(labels), n, self.policy.num_global, keys, self.seed)
        return BuiltViews(views, weight, n_bad, 0.0 if n_bad == n else 1.0)

    def _crop(self, batch: dict[str, Any], rows: np.ndarray | None, valid: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, sizes, draws = batch["image"], np.asarray(batch["size"]), np.asarray(batch["draws"])
        if rows is not None:
            images, sizes, draws = np.asarray(images)[rows], sizes[rows], draws[rows]
        # The canvas is padded to policy.image_size; crops never read past an image's own pixels,
        # so the batch's largest image bounds what needs to travel and be multiplied.
        h, w = (int(x) for x in sizes.max(axis=0)) if valid.any() else (1, 1)
        images = np.asarray(images)[:, :, :h, :w]
        if self.cuda:
            images = np.ascontiguousarray(images)
        return self.augment.apply(self._to_device(images), params_from_draws(draws))

    def _normalise_views(self, batch: dict[str, Any], rows: np.ndarray | None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        gl, lo = batch["global"], batch["local"]
        if rows is not None:
            gl, lo = np.asarray(gl)[rows], np.asarray(lo)[rows]
        if self._norm is None:  # made once: a per-step pageable copy would sync the stream
            self._norm = (self.mean.to(self.device), self.std.to(self.device))
        m, s = self._norm

        def normalise(views_u8: torch.Tensor) -> torch.Tensor:
            """(B, V, 3, S, S) uint8 -> (V * B, 3, S, S) float, view-major (view 0's images first)."""
            b, v = views_u8.shape[:2]
            x = views_u8.transpose(0, 1).reshape(v * b, *views_u8.shape[2:]).float()
            x = (x - m) / s
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

        lo_t = self._to_device(lo)
        return normalise(self._to_device(gl)), (normalise(lo_t) if lo_t.shape[1] else None)


_NOT_YET = object()


class ViewStream:
    """Iterates `BuiltViews`; `prefetch()` fetches the next batch and queues its copy and crops
    ahead of time. The loop calls it from inside step t (`TrainStep`'s `while_computing`: once the
    teacher's forward is queued), so the host's share of the work — taking the batch from Ray
    Data, pinning it, launching the crop kernels — runs while the device computes step t.

    On CUDA the copy and crops run on a side stream, ordered by an event the compute stream waits
    on when the views are handed out (no host sync), so the augmentation of step t+1 overlaps step
    t; the handed-out tensors are recorded on the compute stream so the allocator does not reuse
    them early. On CPU the same code runs in order (nothing to overlap with). Without `prefetch()`
    calls, `next()` prepares each batch when asked.

    Stage times: `data/wait` (host, waiting for the next batch) on `timer`, `augment` (device) on `clock`.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], build: ViewsBuilder, clock: Any = None,
                 timer: Any = None) -> None:
        self.it, self.build, self.clock, self.timer = iter(batches), build, clock, timer
        self.device = build.device
        self.side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._next: Any = _NOT_YET  # _NOT_YET, None (exhausted), or (BuiltViews, ready event)

    def _prepare(self) -> tuple[BuiltViews, Any] | None:
        if self.timer is not None:
            self.timer.start("data/wait")
        try:
            host = next(self.it)
        except StopIteration:
            return None
        finally:
            if self.timer is not None:
                self.timer.stop("data/wait")
        ctx = torch.cuda.stream(self.side) if self.side is not None else contextlib.nullcontext()
        with ctx:
            if self.clock is not None:
                self.clock.start("augment")
            built = self.build(host)
            if self.clock is not None:
                self.clock.stop("augment")
            ready = self.side.record_event() if self.side is not None else None
        return built, ready

    def prefetch(self) -> None:
        """Fetch the next batch and queue its views now (no-op when already done or exhausted)."""
        if self._next is _NOT_YET:
            self._next = self._prepare()

    def __iter__(self) -> ViewStream:
        return self

    def __next__(self) -> BuiltViews:
        self.prefetch()
        if self._next is None:
            raise StopIteration
        built, ready = self._next
        self._next = _NOT_YET
        if ready is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(ready)
            for t in built.tensors:
                t.record_stream(compute)  # made on the side stream, used and freed on the compute stream
        return built
