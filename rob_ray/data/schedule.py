"""Which image each worker sees at each step: a pure function of (seed, epoch, step, rank).

Each epoch is a seeded permutation of the table; a step takes the next `world_size x batch_size`
images and rank r takes its `batch_size` slice. Resuming at step s therefore continues the
exact same sample stream, whatever happened before.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["SampleSchedule"]


@dataclass(frozen=True)
class SampleSchedule:
    num_images: int
    world_size: int
    batch_size: int
    epochs: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {self.num_images} images, fewer than one global batch "
                f"({self.world_size} workers x {self.batch_size}); lower optim.batch_size or scaling.num_workers"
            )

    @property
    def steps_per_epoch(self) -> int:
        # drop_last: every step has a full, static-shaped batch on every worker.
        return self.num_images // (self.world_size * self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs alive at once; the schedule is immutable
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, 7919, epoch]).permutation(self.num_images)

    def lookup(self, rank: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map a rank's sample positions (step * batch_size + j) to (epoch, image index) arrays."""
        positions = np.asarray(positions, dtype=np.int64)
        step = positions // self.batch_size
        j = positions % self.batch_size
        epoch = step // self.steps_per_epoch
        within = step % self.steps_per_epoch
        slot = within * self.world_size * self.batch_size + rank * self.batch_size + j
        images = np.empty_like(positions)
        for e in np.unique(epoch):
            m = epoch == e
            images[m] = self.permutation(int(e))[slot[m]]
        return epoch, images
