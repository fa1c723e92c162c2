"""Method state that differs between workers (the SwAV queue: each rank queues its own batches).

The checkpoint is written by rank 0 alone, so without this every rank would resume with rank 0's
queue. At each checkpoint every rank hands its rank-local tensors over (one all-gather); rank 0
stores the list, and on resume rank r takes entry r back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["gather_rank_state", "restore_rank_state"]


def _keys(method: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(method, "rank_local_keys", ()))


def gather_rank_state(method: nn.Module, world_size: int) -> list[dict[str, torch.Tensor]] | None:
    """Each rank's rank-local state, in rank order (None when the method keeps none).

    A collective: every rank must call it at the same step (checkpoint steps are the same everywhere).
    """
    keys = _keys(method)
    if not keys:
        return None
    state = method.state_dict()
    local = {k: state[k].detach().cpu().clone() for k in keys}
    if world_size == 1:
        return [local]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, local)
    return gathered


def restore_rank_state(method: nn.Module, saved: list[dict[str, torch.Tensor]] | None, rank: int,
                       world_size: int) -> str | None:
    """Load this rank's entry of `saved`; returns a note when the worker count changed (else None)."""
    if not saved or not _keys(method):
        return None
    source = rank % len(saved)
    method.load_state_dict(saved[source], strict=False)  # only the rank-local keys; the rest came from rank 0
    if len(saved) != world_size:
        return (f"rank-local method state ({', '.join(sorted(saved[0]))}) was saved by {len(saved)} workers and "
                f"resumes on {world_size}: worker r continues from saved worker r mod {len(saved)}")
    return None
