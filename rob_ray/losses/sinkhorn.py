"""Sinkhorn-Knopp equipartition of prototype scores (SwAV, Caron et al. 2020, Sec. 3.1 and
main_swav.py `distributed_sinkhorn`), optionally across all workers of a process group.

Q = exp(scores / eps)^T (K x B) is alternately scaled so that every prototype gets 1/K of the
mass and every sample 1/B (B = all samples on all workers); finally each sample's column is
normalised to a distribution. Row sums, the total and the batch count are all-reduced; column
sums are per sample and stay local. With 0 iterations the result is softmax(scores / eps).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["sinkhorn_knopp"]


def _distributed(group) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.03, iterations: int = 3, group=None,
                   distributed: bool | None = None) -> torch.Tensor:
    """Soft codes for a batch of prototype scores.

    Args:
        scores: (B, K) teacher scores before temperature (this worker's rows).
        epsilon: entropic regularisation (RoB 0.03; SwAV 0.05).
        iterations: Sinkhorn iterations (3); 0 gives softmax(scores / epsilon).
        group: process group to equipartition over (default: the world, when initialised).
        distributed: force (True) or forbid (False) the all-reduces; default: on when a group of >1 runs.
    Returns:
        (B, K) float32 codes, each row a distribution over the K prototypes.
    """
    if iterations < 0:
        raise ValueError(f"sinkhorn iterations must be >= 0, got {iterations}")
    use_dist = _distributed(group) if distributed is None else distributed
    # float64: exp(s / 0.03) spans ~1e29 for cosine scores and far more for raw logits.
    s = scores.detach().to(torch.float64) / epsilon
    peak = s.max()
    if use_dist:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    # One global constant: subtracting it changes nothing after the first normalisation,
    # whereas a per-sample maximum would change the finite-iteration result.
    q = torch.exp(s - peak).t()  # (K, B)
    num_protos = q.shape[0]
    if iterations:
        total = q.sum()
        count = torch.tensor(float(q.shape[1]), dtype=torch.float64, device=q.device)
        if use_dist:
            dist.all_reduce(total, group=group)
            dist.all_reduce(count, group=group)
        q /= total
        for _ in range(iterations):
            rows = q.sum(dim=1)
            if use_dist:
                dist.all_reduce(rows, group=group)
            q *= (1.0 / num_protos / rows.clamp_min(1e-300)).unsqueeze(1)
            q *= (1.0 / count / q.sum(dim=0).clamp_min(1e-300)).unsqueeze(0)
    # A sample whose every score underflowed gets an all-zero code (no loss), never NaN.
    q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-300)
    return q.t().float()
