"""Input corruption of the student's global views: iBOT block-wise masks and MSN token dropping.

Both draw from a `random.Random` the caller seeds from torch's global RNG, so a run that is
resumed with the saved RNG state draws the same masks again (Python's RNG, not torch scalar ops:
a mask needs dozens of scalar draws and torch's per-call overhead made that ~1 ms per mask).

- iBOT (Zhou et al. 2021, loader.py `ImageFolderMask`, BEiT's block masking): per crop a target
  ratio is drawn (`pred_ratio` / `pred_ratio_var`: the published recipe "0 0.3 / 0 0.2" means
  "0, or U(0.1, 0.5)", each with probability 1/2); rectangles of area U((min(h, w) // 3)^2, budget)
  and log-aspect-ratio U(log 0.3, log 1/0.3) are added until the target number of patches is reached
  (10 placement attempts per block; the loop stops early when none adds a patch).
- MSN (Assran et al. 2022, src/deit.py `patch_drop`): keep floor(P * (1 - ratio)) randomly chosen
  patch tokens (the same subset for the whole crop batch, as in the published code); the class token
  is always kept.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["block_mask", "ibot_masks", "ibot_masks_keyed", "msn_keep_indices", "sample_pred_ratio", "seeded_step_rng",
           "step_rng"]


def step_rng() -> random.Random:
    """This step's mask RNG, seeded from torch's global CPU RNG (saved and restored with
    checkpoints, so a resumed run draws the same masks) plus the rank (ranks mask differently)."""
    seed = int(torch.randint(0, 2**62, ()))
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return random.Random(seed + rank)


def seeded_step_rng(seed: int, step: int, what: str) -> random.Random:
    """A step-level RNG that is a function of (seed, step) only: the same on every rank and for any
    number of workers (what names the draw, so two uses never share a stream)."""
    return random.Random(f"{int(seed)}:{int(step)}:{what}")


def sample_pred_ratio(rng: random.Random, pred_ratio: Sequence[float], pred_ratio_var: Sequence[float]) -> float:
    """One crop's mask ratio: pick a (mean, var) pair uniformly, then U(mean - var, mean + var)
    (exactly `mean` when var is 0)."""
    i = rng.randrange(len(pred_ratio))
    mean, var = float(pred_ratio[i]), float(pred_ratio_var[i])
    return rng.uniform(mean - var, mean + var) if var > 0 else mean


def block_mask(h: int, w: int, ratio: float, rng: random.Random,
               aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3),
               blocks: list[tuple[int, int, int, int]] | None = None) -> torch.Tensor:
    """BEiT/iBOT block-wise mask of an h x w patch grid covering about `ratio` of it.

    Returns (h, w) bool (True = masked). When `blocks` is a list, each accepted rectangle is
    appended as (top, left, height, width) (for tests of the shape distribution).
    """
    mask = np.zeros((h, w), dtype=bool)
    target = ratio * h * w
    log_lo, log_hi = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
    min_area = (min(h, w) // 3) ** 2
    count = 0
    while count < target:
        budget = target - count
        added = 0
        for _ in range(10):
            area = rng.uniform(min_area, budget)  # min_area > budget: a value between them, as iBOT
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if bw < w and bh < h:
                top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
                region = mask[top:top + bh, left:left + bw]
                new = bh * bw - int(region.sum())
                if 0 < new <= budget:
                    region[...] = True
                    added = new
                    if blocks is not None:
                        blocks.append((top, left, bh, bw))
            if added:
                break
        if not added:
            break  # no rectangle fits the remaining budget
        count += added
    return torch.from_numpy(mask)


def ibot_masks(n: int, h: int, w: int, rng: random.Random, pred_ratio: Sequence[float] = (0.0, 0.3),
               pred_ratio_var: Sequence[float] = (0.0, 0.2), pred_shape: str = "block",
               aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """(n, h, w) bool masks, one independent ratio per crop (iBOT draws one per crop, not per image)."""
    if pred_shape not in ("block", "rand"):
        raise ValueError(f"pred_shape must be 'block' or 'rand', got '{pred_shape}'")
    out = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        ratio = sample_pred_ratio(rng, pred_ratio, pred_ratio_var)
        if ratio <= 0:
            continue
        if pred_shape == "block":
            out[i] = block_mask(h, w, ratio, rng, aspect_ratio)
        else:  # a uniformly random subset of exactly int(ratio * h * w) patches
            out[i].view(-1)[rng.sample(range(h * w), int(ratio * h * w))] = True
    return out


def msn_keep_indices(num_patches: int, drop_ratio: float, rng: random.Random) -> torch.Tensor:
    """(T,) sorted patch indices to keep, T = floor(num_patches * (1 - drop_ratio)) (at least 1)."""
    if not 0 <= drop_ratio < 1:
        raise ValueError(f"drop ratio must be in [0, 1), got {drop_ratio}")
    keep = max(1, math.floor(num_patches * (1 - drop_ratio)))
    return torch.tensor(sorted(rng.sample(range(num_patches), keep)), dtype=torch.long)


def ibot_masks_keyed(keys: Sequence[int], num_views: int, h: int, w: int, pred_ratio: Sequence[float] = (0.0, 0.3),
                     pred_ratio_var: Sequence[float] = (0.0, 0.2), pred_shape: str = "block",
                     aspect_ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> torch.Tensor:
    """(num_views * B, h, w) masks, view-major, crop (v, b) drawn from its own RNG keyed by (keys[b], v):
    an image's masks depend on its key (seed, epoch, image) only, not on its rank or batch slot."""
    keys = [int(k) for k in keys]
    out = torch.zeros(num_views * len(keys), h, w, dtype=torch.bool)
    for v in range(num_views):
        for b, key in enumerate(keys):
            out[v * len(keys) + b] = ibot_masks(1, h, w, random.Random(f"{key}:{v}:ibot"), pred_ratio, pred_ratio_var,
                                                pred_shape, aspect_ratio)[0]
    return out
