"""World-size invariance of the sample stream: each step is one global batch, split over the workers
present; per-image random keys do not depend on the rank or batch slot an image lands in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rob_ray.data import SampleSchedule
from rob_ray.data.schedule import split_sizes
from rob_ray.data.views import image_keys
from rob_ray.models.masking import ibot_masks_keyed


def _step_images(s: SampleSchedule, step: int) -> np.ndarray:
    """What the W workers see at `step`, concatenated in rank order (each through its own lookup)."""
    parts = []
    for r in range(s.world_size):
        b = s.rank_batch(r)
        parts.append(s.lookup(r, np.arange(step * b, (step + 1) * b))[1])
    return np.concatenate(parts)


@pytest.mark.parametrize("global_batch", [12, 7])
def test_the_same_images_per_step_for_1_2_and_3_workers(global_batch):
    runs = {w: SampleSchedule(num_images=100, world_size=w, batch_size=999, epochs=3, seed=5, global_batch=global_batch)
            for w in (1, 2, 3)}
    assert {s.steps_per_epoch for s in runs.values()} == {100 // global_batch}
    total = runs[1].total_steps
    for step in range(total):
        want = _step_images(runs[1], step)
        assert len(want) == global_batch
        for w in (2, 3):
            assert np.array_equal(_step_images(runs[w], step), want), (w, step)
    # An epoch is a permutation: no image twice within it, whatever the split.
    spe = runs[3].steps_per_epoch
    seen = np.concatenate([_step_images(runs[3], t) for t in range(spe)])
    assert len(set(seen.tolist())) == len(seen)


def test_split_is_contiguous_and_balanced():
    assert split_sizes(12, 1) == [12]
    assert split_sizes(12, 5) == [3, 3, 2, 2, 2]
    s = SampleSchedule(num_images=60, world_size=5, batch_size=1, epochs=1, global_batch=12)
    assert [s.rank_slice(r) for r in range(5)] == [(0, 3), (3, 6), (6, 8), (8, 10), (10, 12)]
    with pytest.raises(ValueError, match="cannot be split over 5 workers"):
        SampleSchedule(num_images=60, world_size=5, batch_size=1, epochs=1, global_batch=4)


def test_resuming_on_another_worker_count_continues_the_same_stream():
    two = SampleSchedule(num_images=90, world_size=2, batch_size=1, epochs=2, seed=3, global_batch=10)
    one = SampleSchedule(num_images=90, world_size=1, batch_size=1, epochs=2, seed=3, global_batch=10)
    # 2 workers for steps 0..4, then 1 worker from step 5 (the resumed run rebuilds its schedule).
    mixed = [_step_images(two, t) for t in range(5)] + [_step_images(one, t) for t in range(5, one.total_steps)]
    assert np.array_equal(np.concatenate(mixed), np.concatenate([_step_images(one, t) for t in range(one.total_steps)]))


def test_without_a_global_batch_each_rank_keeps_its_earlier_images():
    """Backward compatibility: global batch = W x batch_size, rank r takes slots r*B..r*B+B-1 of each step."""
    s = SampleSchedule(num_images=103, world_size=3, batch_size=5, epochs=2, seed=7)
    for step in (0, 4, 9):
        e, within = divmod(step, s.steps_per_epoch)
        perm = s.permutation(e)
        for r in range(3):
            slots = within * 15 + r * 5 + np.arange(5)
            assert np.array_equal(s.lookup(r, np.arange(step * 5, step * 5 + 5))[1], perm[slots])


def test_per_image_keys_and_masks_do_not_depend_on_the_batch_slot():
    epochs, images = np.array([0, 0, 1, 1]), np.array([3, 8, 3, 8])
    keys = image_keys(11, epochs, images)
    assert len(set(keys.tolist())) == 4  # a new epoch or image is a new key
    swapped = image_keys(11, epochs[::-1], images[::-1])
    assert np.array_equal(swapped, keys[::-1])
    assert not np.array_equal(image_keys(12, epochs, images), keys)  # the seed matters
    full = ibot_masks_keyed(keys.tolist(), 2, 6, 6, pred_ratio=(0.3,), pred_ratio_var=(0.2,))
    # The same images split over two "ranks": each crop's mask is the one it had in the full batch.
    lo = ibot_masks_keyed(keys[:1].tolist(), 2, 6, 6, pred_ratio=(0.3,), pred_ratio_var=(0.2,))
    hi = ibot_masks_keyed(keys[1:].tolist(), 2, 6, 6, pred_ratio=(0.3,), pred_ratio_var=(0.2,))
    for v in range(2):
        assert torch.equal(full[v * 4: v * 4 + 1], lo[v: v + 1])
        assert torch.equal(full[v * 4 + 1: v * 4 + 4], hi[v * 3: v * 3 + 3])
    assert full.any() and not torch.equal(full[0], full[1])
