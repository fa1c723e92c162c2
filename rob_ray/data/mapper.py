"""Positions -> augmented multi-crop batches. Plain Python: Ray Data runs it in actors,
tests and the GPU benchmark run it directly."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from rob_ray.data.decode import decode_rgb
from rob_ray.data.multicrop import DRAW_FIELDS, MultiCropAugment, draw_views, sample_seed
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

    - `data_actors`: `global` (n, G, 3, Sg, Sg) uint8 and `local` (n, L, 3, Sl, Sl) uint8 views
      (zeros for unreadable images);
    - `worker`: `image` (n, 3, R, R) uint8 (each image shrunk to fit R = `policy.image_size`, at the
      top left, zero padding), `size` (n, 2) int64 (height, width) and `draws` (n, V, DRAW_FIELDS)
      float64: every random choice of every view, drawn here from the image's own generator in the
      per-image policy's order, so the worker's batched crops use the draws this mapper would.
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
        self.augment = MultiCropAugment(policy)
        self.bad_logged = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.map_positions(np.asarray(batch["id"], dtype=np.int64) + self.offset)

    def map_positions(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """Augmented views for a rank's absolute sample positions (step * rank_batch + j)."""
        epochs, images = self.schedule.lookup(self.rank, positions)
        if self.policy.crops_on == "worker":
            return self._map_images(epochs, images)
        p = self.policy
        n = len(positions)
        g = np.zeros((n, p.num_global, 3, p.global_size, p.global_size), dtype=np.uint8)
        loc = np.zeros((n, p.num_local, 3, p.local_size, p.local_size), dtype=np.uint8)
        valid = np.zeros(n, dtype=bool)
        for i, (e, idx) in enumerate(zip(epochs.tolist(), images.tolist(), strict=True)):
            image = self._decode(idx)
            if image is None:
                continue
            gv, lv = self.augment(image, sample_seed(self.schedule.seed, e, idx))
            g[i] = gv.numpy()
            if p.num_local:
                loc[i] = lv.numpy()
            valid[i] = True
        return {
            "global": g,
            "local": loc,
            "valid": valid,
            "label": self.table.labels[images],
            "image_index": images,
            "epoch": epochs,
        }

    def _decode(self, idx: int) -> np.ndarray | None:
        image = decode_rgb(self.table.read(idx))
        if image is None and self.bad_logged < _MAX_LOGGED_BAD:
            log.warning("skipping unreadable image %s", self.table.describe(idx))
            self.bad_logged += 1
        return image

    def _map_images(self, epochs: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
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
            # Drawn for the image the worker crops (shrunk to fit R; the same image when it fits already).
            draws[i] = draw_views(sample_seed(self.schedule.seed, e, idx), chw.shape[1], chw.shape[2], p)
            valid[i] = True
        return {"image": out, "size": sizes, "draws": draws, "valid": valid, "label": self.table.labels[images],
                "image_index": images, "epoch": epochs}

    def iter_local(self, start_step: int, end_step: int):
        """The same batches without Ray: one dict of numpy arrays per step."""
        b = self.schedule.rank_batch(self.rank)
        for step in range(start_step, end_step):
            yield self.map_positions(np.arange(step * b, (step + 1) * b))


def measure_decode_ms(table: ImageTable, policy: CropPolicy, n: int = 8) -> float | None:
    """Median CPU milliseconds per image of what one data actor does for `policy.crops_on`, on up to
    `n` images spread over `table` (one thread, as in an actor); None when none could be read."""
    import time

    idx = np.unique(np.linspace(0, len(table) - 1, min(n, len(table))).round().astype(np.int64))
    augment = MultiCropAugment(policy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for i in idx.tolist():
            t0 = time.perf_counter()
            image = decode_rgb(table.read(i))
            if image is None:
                continue
            if policy.crops_on == "worker":
                chw = fit_image(image, policy.image_size)
                draw_views(sample_seed(0, 0, i), chw.shape[1], chw.shape[2], policy)
            else:
                augment(image, sample_seed(0, 0, i))
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return 1000.0 * float(np.median(times)) if times else None
