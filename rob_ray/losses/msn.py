"""RoB-MSN loss (Duval et al. 2023; MSN, Assran et al. 2022, src/losses.py `init_msn_loss`).

Both branches are scored against the teacher's frozen prototypes by cosine similarity
(MSN's soft nearest-neighbour classifier with one-hot prototype labels):
- targets P_t = softmax(cos(z_t, prototypes) / tau_t), tau_t = 0.025 (MSN: tau 0.1 sharpened with
  T = 0.25, since softmax(c / 0.1) ** 4 renormalised = softmax(c / 0.025)); optionally
  Sinkhorn-balanced (MSN `distributed_sinkhorn`, 3 iterations, on the probabilities, all-reduced);
- CE(P_t[i], log_softmax(cos(z_s, prototypes) / tau_s)[v]), tau_s = 0.1, averaged over the batch
  and over the view pairs (`view_pairs`);
- optional ME-MAX: + w * (sum_k pbar_k log pbar_k + log K), pbar = mean student probability over
  all anchors of all ranks (MSN `me_max`, weight 1 in its configs).
Sinkhorn and ME-MAX are off by default in RoB: the frozen teacher cannot collapse.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rob_ray.losses.pairing import batch_and_views, view_pairs
from rob_ray.losses.sinkhorn import sinkhorn_knopp

__all__ = ["MsnLoss", "msn_sinkhorn"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def msn_sinkhorn(probs: torch.Tensor, iters: int = 3) -> torch.Tensor:
    """(N, K) probabilities -> (N, K) rows summing to 1 with (approximately) equal prototype mass,
    rows/columns normalised over the samples of all ranks (MSN `distributed_sinkhorn`).

    MSN's Sinkhorn on probabilities is the shared Sinkhorn-Knopp on log-probabilities with
    epsilon = 1: exp(log p) = p, and the per-batch constant it subtracts cancels.
    """
    return sinkhorn_knopp(torch.log(probs.float()), epsilon=1.0, iterations=iters)


class _AllReduceMean(torch.autograd.Function):
    """Mean over all ranks' rows of per-rank row means `x` (rank r has `n` rows): sum_r n_r x_r / sum_r n_r,
    whose gradient flows back to each rank's own term unchanged (MSN `AllReduce`; with equal n_r it is
    MSN's plain mean over ranks). With unequal n_r the loop weights rank r's loss by W n_r / N, so DDP's
    gradient average gives each rank's term its n_r / N share."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int) -> torch.Tensor:  # type: ignore[override]
        x = x.clone() * n
        count = torch.tensor([float(n)], dtype=x.dtype, device=x.device)
        dist.all_reduce(x)
        dist.all_reduce(count)
        return x / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None



class MsnLoss(nn.Module):
    """Args:
        teacher_temp: tau_t on the teacher's cosine scores (0.025).
        student_temp: tau_s on the student's cosine scores (0.1).
        pairing: "same_view" (RoB) or "swapped".
        sinkhorn: balance the targets with Sinkhorn-Knopp (MSN true; RoB off); sinkhorn_iters (3).
        me_max: add the mean-entropy-maximisation regulariser (MSN true; RoB off); me_max_weight (1.0).

    Forward:
        student_scores: (V * B, K) cosine similarities of the student's projections to the prototypes.
        teacher_scores: (G * B, K) the teacher's cosine similarities on its (unmasked) global views.
        num_teacher_views: G; num_global: global crops among the student's V views (keyword, required).
    Returns a dict: `loss`, `ce`, `me_max`, `teacher_probs` (G * B, K), `student_log_probs` (V * B, K).
    """

    def __init__(self, teacher_temp: float = 0.025, student_temp: float = 0.1, pairing: str = "same_view",
                 sinkhorn: bool = False, sinkhorn_iters: int = 3, me_max: bool = False, me_max_weight: float = 1.0) -> None:
        super().__init__()
        self.teacher_temp, self.student_temp, self.pairing = teacher_temp, student_temp, pairing
        self.sinkhorn, self.sinkhorn_iters = sinkhorn, sinkhorn_iters
        self.me_max, self.me_max_weight = me_max, me_max_weight

    def forward(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, *, num_teacher_views: int,
                num_global: int) -> dict[str, torch.Tensor]:
        g = num_teacher_views
        _, v = batch_and_views(teacher_scores.shape[0], student_scores.shape[0], g)
        if student_scores.shape[1] != teacher_scores.shape[1]:
            raise ValueError(f"student scores have {student_scores.shape[1]} prototypes, teacher {teacher_scores.shape[1]}")
        t_probs = F.softmax(teacher_scores.float().detach() / self.teacher_temp, dim=-1)
        if self.sinkhorn:
            t_probs = msn_sinkhorn(t_probs, self.sinkhorn_iters)
        s_logp = F.log_softmax(student_scores.float() / self.student_temp, dim=-1)
        t_chunks, s_chunks = t_probs.chunk(g), s_logp.chunk(v)
        pairs = view_pairs(g, v, num_global, self.pairing)
        ce = sum(-(t_chunks[i] * s_chunks[j]).sum(-1).mean() for i, j in pairs) / len(pairs)
        reg = ce.detach() * 0.0
        if self.me_max:
            avg = s_logp.exp().mean(dim=0)
            if _distributed():
                avg = _AllReduceMean.apply(avg, s_logp.shape[0])
            reg = (avg * torch.log(avg.clamp_min(1e-12))).sum() + math.log(avg.shape[0])
        loss = ce + self.me_max_weight * reg if self.me_max else ce
        return {"loss": loss, "ce": ce.detach(), "me_max": reg.detach(), "teacher_probs": t_probs,
                "student_log_probs": s_logp}
