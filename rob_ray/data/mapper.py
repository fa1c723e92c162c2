"""Positions -> augmented multi-crop batches. Plain Python: Ray Data runs it in actors,
tests and the GPU benchmark run it directly."""

from __future__ import annotations

import logging

import numpy as np

from rob_ray.data.decode import decode_rgb
from rob_ray.data.multicrop import MultiCropAugment, sample_seed
from rob_ray.data.policy import CropPolicy
from rob_ray.data.schedule import SampleSchedule
from rob_ray.data.sources import ImageTable

__all__ = ["MultiCropMapper"]

log = logging.getLogger(__name__)
_MAX_LOGGED_BAD = 5


class MultiCropMapper:
    """Callable for `Dataset.map_batches`: {"id": positions} -> a batch of uint8 views.

    Output columns: `global` (n, G, 3, Sg, Sg) uint8, `local` (n, L, 3, Sl, Sl) uint8,
    `valid` (n,) bool (False for unreadable images, whose views are zeros),
    `label` (n,) int64, `image_index` (n,) int64, `epoch` (n,) int64.
    """

    def __init__(self, table: ImageTable | list, policy: CropPolicy, schedule: SampleSchedule, rank: int,
                 position_offset: int = 0) -> None:
        if isinstance(table, list):  # an ObjectRef wrapped in a list (so Ray does not resolve it eagerly)
            import ray

            table = ray.get(table[0])
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
        """Augmented views for a rank's absolute sample positions (step * batch_size + j)."""
        epochs, images = self.schedule.lookup(self.rank, positions)
        p = self.policy
        n = len(positions)
        g = np.zeros((n, p.num_global, 3, p.global_size, p.global_size), dtype=np.uint8)
        loc = np.zeros((n, p.num_local, 3, p.local_size, p.local_size), dtype=np.uint8)
        valid = np.zeros(n, dtype=bool)
        for i, (e, idx) in enumerate(zip(epochs.tolist(), images.tolist(), strict=True)):
            image = decode_rgb(self.table.read(idx))
            if image is None:
                if self.bad_logged < _MAX_LOGGED_BAD:
                    log.warning("skipping unreadable image %s", self.table.describe(idx))
                    self.bad_logged += 1
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

    def iter_local(self, start_step: int, end_step: int):
        """The same batches without Ray: one dict of numpy arrays per step."""
        b = self.schedule.batch_size
        for step in range(start_step, end_step):
            yield self.map_positions(np.arange(step * b, (step + 1) * b))
