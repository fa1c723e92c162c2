"""Positions -> augmented multi-crop batches. Plain Python: Ray Data runs it in actors,
tests and the GPU benchmark run it directly.

Both placements read, decode and shrink each image and draw its views' random choices per image
(`draw_views`, from the image's own generator); they differ in where the batched crops
(`BatchedMultiCrop`) are made: here, in the actor, for the whole batch at once (`data_actors`,
shipped as uint8 views), or in the training worker (`worker`, shipped as the shrunk images and
their draws). Same draws, same crop code: the two placements' views differ only by the uint8
rounding of the actors' output. (Per-image torchvision crops, `MultiCropAugment`, cost ~3x the
batched ones per image on a CPU core; they stay as the reference the batched code is tested against.)"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from rob_ray.data.batched_augment import BatchedMultiCrop, params_from_draws
from rob_ray.data.decode import decode_rgb
from rob_ray.data.multicrop import DRAW_FIELDS, draw_views, sample_seed
from rob_ray.data.policy import CropPolicy
from rob_ray.data.schedule import SampleSchedule
from rob_ray.data.sources import ImageTable

__all__ = ["MultiCropMapper", "fit_image", "measure_decode_ms"]

log = logging.getLogger(__name__)
_MAX_LOGGED_BAD = 5


def fit_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, h, w) uint8 with max(h, w) <= max_side, aspect kept, never enlarged.

    Shrinking here (antialiased) bounds what travels to the GPU; crops then see the same field of
    view as on the CPU path, at up to `max_side` pixels of resolution.
    """
    chw = torch.from_numpy(image).permute(2, 0, 1)
    h, w = chw.shape[1:]
    if max(h, w) <= max_side:
        return chw.numpy()
    s = max_side / max(h, w)
    size = [max(1, min(max_side, round(h * s))), max(1, min(max_side, round(w * s)))]
    return TF.resize(chw, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True).numpy()


class MultiCropMapper:
    """Callable for `Dataset.map_batches`: {"id": positions} -> a batch of uint8 views.

    Both placements (`policy.crops_on`) output `valid` (n,) bool (False for unreadable images),
    `label` (n,) int64, `image_index` (n,) int64, `epoch` (n,) int64, and:

    - `data_actors`: `global` (n, G, 3, Sg, Sg) and `local` (n, L, 3, Sl, Sl) uint8 views, cropped
      here for the whole batch at once (zeros for unreadable images);
    - `worker`: `image` (n, 3, R, R) uint8 (each image shrunk to fit R = `policy.image_size`, at the
      top left, zero padding), `size` (n, 2) int64 (height, width) and `draws` (n, V, DRAW_FIELDS)
      float64: every random choice of every view, drawn here from the image's own generator in the
      per-image policy's order, so the worker's batched crops use the draws this mapper would.

    Either way crops come from the image shrunk to fit `policy.image_size` (never enlarged).
    """

    def __init__(self, table: ImageTable | list, policy: CropPolicy, schedule: SampleSchedule, rank: int,
                 position_offset: int = 0, nice: int = 0) -> None:
        if isinstance(table, list):  # an ObjectRef wrapped in a list (so Ray does not resolve it eagerly)
            import ray

            table = ray.get(table[0])
        if nice:
            # An actor beside a CPU training worker: the step's threads come first, decoding takes the
            # gaps (it needs a few % of a core; Ray Data's queue absorbs the jitter).
            os.nice(nice)
        self.table = table
        self.policy = policy
        self.schedule = schedule
        self.rank = rank
        self.offset = position_offset
        self.crop = BatchedMultiCrop(policy)  # [0, 1] output: the worker normalises
        self.bad_logged = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.map_positions(np.asarray(batch["id"], dtype=np.int64) + self.offset)

    def map_positions(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Augmented views for a rank's absolute sample positions (step * rank_batch + j)."""
        epochs, images = self.schedule.lookup(self.rank, positions)
        out = self._load(epochs, images)
        if self.policy.crops_on == "data_actors":
            out = self._crop_batch(out)
        return {**out, "label": self.table.labels[images], "image_index": images, "epoch": epochs}

    def _decode(self, idx: int) -> np.ndarray | None:
        image = decode_rgb(self.table.read(idx))
        if image is None and self.bad_logged < _MAX_LOGGED_BAD:
            log.warning("skipping unreadable image %s", self.table.describe(idx))
            self.bad_logged += 1
        return image

    def _load(self, epochs: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
        """Read, decode and shrink each image onto an (n, 3, R, R) canvas, and draw its views."""
        p = self.policy
        r = p.image_size
        n = len(images)
        out = np.zeros((n, 3, r, r), dtype=np.uint8)
        sizes = np.ones((n, 2), dtype=np.int64)
        draws = np.zeros((n, p.num_views, DRAW_FIELDS), dtype=np.float64)
        valid = np.zeros(n, dtype=bool)
        for i, (e, idx) in enumerate(zip(epochs.tolist(), images.tolist(), strict=True)):
            image = self._decode(idx)
            if image is None:
                continue
            chw = fit_image(image, r)
            out[i, :, : chw.shape[1], : chw.shape[2]] = chw
            sizes[i] = chw.shape[1:]
            # Drawn for the image that is cropped (shrunk to fit R; the same image when it fits already).
            draws[i] = draw_views(sample_seed(self.schedule.seed, e, idx), chw.shape[1], chw.shape[2], p)
            valid[i] = True
        return {"image": out, "size": sizes, "draws": draws, "valid": valid}

    def _crop_batch(self, loaded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The readable rows' views at once, on one thread (an actor holds a fraction of a core),
        rounded to uint8 (a quarter of the bytes to ship); unreadable rows stay zeros."""
        p, valid = self.policy, loaded["valid"]
        n = len(valid)
        g = np.zeros((n, p.num_global, 3, p.global_size, p.global_size), dtype=np.uint8)
        loc = np.zeros((n, p.num_local, 3, p.local_size, p.local_size), dtype=np.uint8)
        rows = np.flatnonzero(valid)
        if len(rows):
            h, w = (int(x) for x in loaded["size"][rows].max(axis=0))
            canvas = torch.from_numpy(np.ascontiguousarray(loaded["image"][rows, :, :h, :w]))
            with one_torch_thread():
                gv, lv = self.crop.apply(canvas, params_from_draws(loaded["draws"][rows]))
                g[rows] = _to_uint8(gv, len(rows))
                if p.num_local:
                    loc[rows] = _to_uint8(lv, len(rows))
        return {"global": g, "local": loc, "valid": valid}

    def iter_local(self, start_step: int, end_step: int):
        """The same batches without Ray: one dict of numpy arrays per step."""
        b = self.schedule.rank_batch(self.rank)
        for step in range(start_step, end_step):
            yield self.map_positions(np.arange(step * b, (step + 1) * b))


def _to_uint8(views: torch.Tensor, n: int) -> np.ndarray:
    """(V * n, 3, S, S) view-major floats in [0, 1] -> (n, V, 3, S, S) uint8, rounded to nearest."""
    x = views.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return x.view(-1, n, *x.shape[1:]).transpose(0, 1).numpy()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run a block with torch on one thread (what an actor's share of a core pays for), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_decode_ms(table: ImageTable, policy: CropPolicy, n: int = 8) -> float | None:
    """CPU milliseconds per image of what one data actor does for `policy.crops_on` (read, decode,
    shrink, draw; for `data_actors` also the batched crops), on up to `n` images spread over
    `table`, one thread as in an actor; the better of two passes. None when none could be read."""
    import time

    idx = np.unique(np.linspace(0, len(table) - 1, min(n, len(table))).round().astype(np.int64))
    mapper = MultiCropMapper(table, policy, SampleSchedule(len(table), 1, 1, 1), 0)
    mapper.bad_logged = _MAX_LOGGED_BAD  # the run logs unreadable images; a measurement does not
    best = None
    with one_torch_thread():
        for _ in range(2):  # the first pass pays one-time costs (allocator, file cache)
            t0 = time.perf_counter()
            loaded = mapper._load(np.zeros(len(idx), dtype=np.int64), idx)
            n_ok = int(loaded["valid"].sum())
            if not n_ok:
                return None
            if policy.crops_on == "data_actors":
                mapper._crop_batch(loaded)
            ms = 1000.0 * (time.perf_counter() - t0) / n_ok
            best = ms if best is None else min(best, ms)
    return best
