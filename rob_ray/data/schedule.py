"""Which image each worker sees at each step: a pure function of (seed, epoch, step, rank).

Each epoch is a seeded permutation of the table. Step s is defined by its *global* batch: positions
`s * G ... s * G + G - 1` of the run's stream (G = `global_batch_size`, epoch by epoch), whatever the
number of workers; the W workers present split it into contiguous slices (`rank_slice`: sizes differ
by at most one when W does not divide G). So the sequence of global batches - and everything that is
a function of the step (LR, weight decay, temperatures) - is the same on 1, 2 or N workers, and a run
resumed at step s on another worker count continues the same stream.

Without `global_batch`, G = world_size x batch_size (the per-worker batch of earlier versions: the
same images per rank and step as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["SampleSchedule", "split_sizes"]


def split_sizes(global_batch: int, world_size: int) -> list[int]:
    """Per-rank batch sizes of one global batch: contiguous, as equal as possible, the first
    `global_batch % world_size` ranks one image larger. Pure function."""
    if world_size < 1 or global_batch < world_size:
        raise ValueError(f"a global batch of {global_batch} cannot be split over {world_size} workers "
                         "(every worker needs at least one image)")
    q, r = divmod(global_batch, world_size)
    return [q + (1 if i < r else 0) for i in range(world_size)]


@dataclass(frozen=True)
class SampleSchedule:
    num_images: int
    world_size: int
    batch_size: int  # per worker; only used when global_batch is None
    epochs: int
    seed: int = 0
    global_batch: int | None = None  # fixed images per step over all workers

    def __post_init__(self) -> None:
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the dataset has {self.num_images} images, fewer than one global batch "
                f"({self.describe_batch()}); lower optim.batch_size / optim.global_batch_size or scaling.num_workers"
            )
        split_sizes(self.global_batch_size, self.world_size)  # raises when a worker would get no image

    def describe_batch(self) -> str:
        if self.global_batch is None:
            return f"{self.world_size} workers x {self.batch_size}"
        return f"global batch {self.global_batch}"

    @property
    def global_batch_size(self) -> int:
        return self.global_batch if self.global_batch is not None else self.world_size * self.batch_size

    @property
    def steps_per_epoch(self) -> int:
        # drop_last: every step has a full, static-shaped batch on every worker.
        return self.num_images // self.global_batch_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def rank_batch(self, rank: int) -> int:
        """Images rank `rank` takes at every step."""
        return split_sizes(self.global_batch_size, self.world_size)[rank]

    def rank_slice(self, rank: int) -> tuple[int, int]:
        """[lo, hi): the slice of each step's global batch that `rank` takes."""
        sizes = split_sizes(self.global_batch_size, self.world_size)
        lo = sum(sizes[:rank])
        return lo, lo + sizes[rank]

    @lru_cache(maxsize=4)  # noqa: B019 - a handful of epochs alive at once; the schedule is immutable
    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, 7919, epoch]).permutation(self.num_images)

    def global_images(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, image index) arrays of step `step`'s whole global batch, in rank order."""
        g = self.global_batch_size
        return self.lookup_global(np.arange(step * g, (step + 1) * g))

    def lookup_global(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global stream positions (step * G + k) -> (epoch, image index) arrays."""
        positions = np.asarray(positions, dtype=np.int64)
        g = self.global_batch_size
        step, k = positions // g, positions % g
        epoch = step // self.steps_per_epoch
        slot = (step % self.steps_per_epoch) * g + k
        images = np.empty_like(positions)
        for e in np.unique(epoch):
            m = epoch == e
            images[m] = self.permutation(int(e))[slot[m]]
        return epoch, images

    def lookup(self, rank: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map a rank's sample positions (step * rank_batch(rank) + j) to (epoch, image index) arrays."""
        positions = np.asarray(positions, dtype=np.int64)
        b = self.rank_batch(rank)
        lo, _ = self.rank_slice(rank)
        step, j = positions // b, positions % b
        return self.lookup_global(step * self.global_batch_size + lo + j)
