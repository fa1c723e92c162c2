"""World-size-invariant steps: one global batch per step, split across the workers present.

`SampleSchedule` hands rank r its slice of each step's global batch (G images); this module makes
the maths of the step independent of how the slice sizes fall:

- `rank_share`: the factor on rank r's loss so that DDP's mean of the ranks' gradients is the
  gradient of the mean over the *global* batch (W * b_r / G; 1 when W divides G);
- `global_mean`: a per-rank batch-mean metric (the loss) turned into the global-batch mean;
- `resize_note`: the line logged when a run resumes on another number of workers.

Cross-worker statistics inside the objectives (DINO centre, Sinkhorn, MSN ME-MAX, the SwAV queue)
are sums and counts over all ranks already (see `rob_ray.losses`). Plain torch: no Ray here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rob_ray.data.schedule import SampleSchedule

__all__ = ["global_mean", "rank_share", "resize_note"]


def rank_share(schedule: SampleSchedule, rank: int) -> float:
    """W * b_r / G: rank r's loss weight under DDP's gradient averaging (1.0 for an even split)."""
    return schedule.world_size * schedule.rank_batch(rank) / schedule.global_batch_size


def global_mean(value: torch.Tensor | float, rank_batch: int, global_batch: int, world_size: int,
                device: torch.device | None = None) -> float:
    """The mean over the global batch of a metric each rank computed as a mean over its own rows.
    A collective when world_size > 1 (every rank calls it at the same step)."""
    v = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    if world_size == 1:
        return v
    t = torch.tensor([v * rank_batch], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / global_batch


def resize_note(saved_world_size: int | None, world_size: int, step: int, schedule: SampleSchedule) -> str | None:
    """`workers 4 -> 3 at step N ...` when the checkpoint was written by another number of workers."""
    if saved_world_size is None or saved_world_size == world_size:
        return None
    sizes = sorted({schedule.rank_batch(r) for r in range(world_size)})
    per = "/".join(str(s) for s in sizes)
    return (f"workers {saved_world_size} -> {world_size} at step {step} (global batch {schedule.global_batch_size} "
            f"kept: {per} images per worker)")
