"""Per-step schedules, precomputed once (DINO utils.cosine_scheduler): the loop only indexes them."""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_schedule", "teacher_temp_schedule"]


def cosine_schedule(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                    warmup_start: float = 0.0) -> np.ndarray:
    """Linear warm-up from `warmup_start` to `base`, then cosine from `base` to `final`.

    Returns an array of length `total_steps` (float64).
    """
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(warmup_start, base, warmup_steps, endpoint=False) if warmup_steps else np.zeros(0)
    rest = total_steps - warmup_steps
    t = np.arange(rest)
    cos = final + 0.5 * (base - final) * (1 + np.cos(np.pi * t / max(rest, 1)))
    return np.concatenate([warm, cos]).astype(np.float64)


def teacher_temp_schedule(warmup_temp: float, final_temp: float, warmup_epochs: int, total_steps: int,
                          steps_per_epoch: int) -> np.ndarray:
    """DINO's teacher temperature per step: linear over epochs 0..warmup_epochs-1 from `warmup_temp` to
    `final_temp` (np.linspace, both ends included), then constant; every step of an epoch shares its value."""
    epochs = np.arange(total_steps) // max(steps_per_epoch, 1)
    if warmup_epochs <= 0:
        return np.full(total_steps, final_temp, dtype=np.float64)
    ramp = np.linspace(warmup_temp, final_temp, warmup_epochs)
    return np.where(epochs < warmup_epochs, ramp[np.minimum(epochs, warmup_epochs - 1)], final_temp).astype(np.float64)
