"""The sample schedule: epochs are permutations, ranks are disjoint, resume continues the stream."""

from __future__ import annotations

import numpy as np
import pytest

from rob_ray.data import SampleSchedule


def _images(s: SampleSchedule, rank: int, start: int, end: int) -> np.ndarray:
    return s.lookup(rank, np.arange(start * s.batch_size, end * s.batch_size))[1]


def test_each_epoch_covers_distinct_images_across_ranks():
    s = SampleSchedule(num_images=103, world_size=3, batch_size=5, epochs=3, seed=7)
    assert s.steps_per_epoch == 6
    for epoch in range(3):
        seen = np.concatenate([_images(s, r, epoch * 6, (epoch + 1) * 6) for r in range(3)])
        assert len(seen) == 90 and len(set(seen.tolist())) == 90  # no repeats within an epoch
    assert not np.array_equal(_images(s, 0, 0, 6), _images(s, 0, 6, 12))  # reshuffled each epoch


def test_resume_continues_the_same_stream():
    s = SampleSchedule(num_images=50, world_size=2, batch_size=4, epochs=4, seed=1)
    full = _images(s, 1, 0, s.total_steps)
    resumed = np.concatenate([_images(s, 1, 0, 9), _images(s, 1, 9, s.total_steps)])
    assert np.array_equal(full, resumed)
    fresh = SampleSchedule(num_images=50, world_size=2, batch_size=4, epochs=4, seed=1)
    assert np.array_equal(_images(fresh, 1, 9, 12), full[9 * 4: 12 * 4])


def test_too_few_images_is_explained():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        SampleSchedule(num_images=10, world_size=2, batch_size=8, epochs=1)
