"""RoB-SwAV loss (Duval et al. 2023, Sec. 3; SwAV, Caron et al. 2020, Eq. 2-3 and main_swav.py).

The frozen teacher scores its global crops against its prototypes; Sinkhorn-Knopp turns the scores
into balanced codes q (optionally together with a FIFO queue of past teacher scores); the student's
crops predict them: CE(q_i, softmax(s_v / tau)), averaged over the batch and over view pairs.

The queue is global: every rank keeps the same rows (the teacher scores of the last global batches,
all-gathered in rank order), and rank 0 alone adds them to the distributed Sinkhorn problem, so the
problem - queue plus global batch - is the same for 1, 2 or N workers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rob_ray.losses.pairing import batch_and_views, view_pairs
from rob_ray.losses.sinkhorn import sinkhorn_knopp

__all__ = ["SwavLoss"]


class SwavLoss(nn.Module):
    """Args:
        num_prototypes: K (width of the queue rows).
        epsilon, sinkhorn_iterations: Sinkhorn parameters (RoB 0.03, 3; 0 iterations = softmax(t / eps)).
        student_temp: tau (0.1).
        pairing: "same_view" (RoB) or "swapped" (SwAV: every v != i).
        queue_length: rows of past teacher scores per teacher view, over all workers (0 = no queue).
            As in SwAV, the queue joins the Sinkhorn problem only once it is full.
        num_teacher_views: G, the global crops the teacher scores (1 or 2); the queue keeps one per view.

    Forward:
        student_scores: (V * B, K) view-major; teacher_scores: (G * B, K); num_teacher_views (must be
        the constructor's G: the queue is allocated per view) and num_global (global crops among the
        student's V views), keyword, required.
    Returns a dict: `loss`, `teacher_probs` (G * B, K) codes, `student_log_probs` (V * B, K).
    """

    def __init__(self, num_prototypes: int, epsilon: float = 0.03, sinkhorn_iterations: int = 3,
                 student_temp: float = 0.1, pairing: str = "same_view", queue_length: int = 0,
                 num_teacher_views: int = 2) -> None:
        super().__init__()
        self.epsilon, self.iterations, self.student_temp = epsilon, sinkhorn_iterations, student_temp
        self.pairing, self.queue_length, self.num_teacher_views = pairing, queue_length, num_teacher_views
        # Buffers, so the method's state_dict (the checkpoint) carries the queue across a resume.
        self.register_buffer("queue", torch.zeros(num_teacher_views, queue_length, num_prototypes))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))

    def forward(self, student_scores: torch.Tensor, teacher_scores: torch.Tensor, *, num_teacher_views: int,
                num_global: int) -> dict[str, torch.Tensor]:
        g = self.num_teacher_views
        if num_teacher_views != g:
            raise ValueError(f"this SwavLoss was built for {g} teacher view(s) (its queue has one row set per view), "
                             f"called with {num_teacher_views}")
        batch, v = batch_and_views(teacher_scores.shape[0], student_scores.shape[0], g)
        if student_scores.shape[1] != teacher_scores.shape[1]:
            raise ValueError(f"student scores have {student_scores.shape[1]} prototypes, the teacher {teacher_scores.shape[1]}")
        teacher = teacher_scores.detach().float()
        use_queue = self.queue_length > 0 and int(self.queue_count) >= self.queue_length
        codes = []
        for i, t in enumerate(teacher.chunk(g)):
            if use_queue and _rank() == 0:
                # Queue rows widen the equipartition (once, on rank 0); only this batch's codes are kept.
                codes.append(sinkhorn_knopp(torch.cat([self.queue[i], t]), self.epsilon, self.iterations)[-batch:])
            else:
                codes.append(sinkhorn_knopp(t, self.epsilon, self.iterations))
        if self.queue_length > 0 and self.training:
            self._push(teacher.chunk(g))
        s_logp = F.log_softmax(student_scores.float() / self.student_temp, dim=-1)
        s_chunks = s_logp.chunk(v)
        pairs = view_pairs(g, v, num_global, self.pairing)
        loss = sum(-(codes[i] * s_chunks[j]).sum(dim=-1).mean() for i, j in pairs) / len(pairs)
        return {"loss": loss, "teacher_probs": torch.cat(codes), "student_log_probs": s_logp}

    @torch.no_grad()
    def _push(self, chunks: tuple[torch.Tensor, ...]) -> None:
        rows = 0
        for i, t in enumerate(chunks):
            t = gather_rows(t)  # the global batch, rank order: every rank's queue is the same
            self.queue[i] = torch.cat([t.to(self.queue.dtype), self.queue[i]])[: self.queue_length]
            rows = t.shape[0]
        self.queue_count.add_(rows)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@torch.no_grad()
def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """(n_r, K) on each rank -> (sum n_r, K) on every rank, in rank order (ranks may hold different n_r)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    top = max(sizes_i)
    padded = torch.zeros(top, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:k] for o, k in zip(out, sizes_i, strict=True)])
