"""Spherical k-means (Dhillon & Modha 2001) in plain torch: unit-norm points, unit-norm centroids,
similarity = cosine. Scales to K = 65,536 on a GPU: the (N, K) similarity matrix is never built
whole — assignment runs over row chunks sized to a memory budget, and the centroid update is an
`index_add_` of the chunk's rows into (K, D) sums.

Init: k-means++ (Arthur & Vassilvitskii 2007, on cosine distance 1 - cos) or a seeded uniform draw of
distinct points; `auto` takes k-means++ up to 4,096 centroids (its K sequential passes over the data
cost more than the Lloyd iterations beyond that) and the seeded draw above. Empty clusters are
re-seeded with the points their centroid fits worst (lowest best-cosine), never left as NaN rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["KMeansResult", "assign", "spherical_kmeans"]

KMEANSPP_MAX_K = 4096


@dataclass
class KMeansResult:
    """centroids (K, D) unit rows (CPU float32); assignments (N,) int64; counts (K,) int64;
    objective: mean cosine of each point to its centroid (higher is better); history: objective per
    iteration; iterations: Lloyd iterations run; reseeded: empty clusters re-seeded in total."""

    centroids: torch.Tensor
    assignments: torch.Tensor
    counts: torch.Tensor
    objective: float
    iterations: int
    init: str
    history: list[float] = field(default_factory=list)
    reseeded: int = 0


def _chunk_rows(k: int, budget_bytes: int) -> int:
    """Rows per assignment chunk: the (rows, K) float32 similarity block stays under `budget_bytes`."""
    return max(1, min(1 << 16, budget_bytes // (4 * max(k, 1))))


@torch.no_grad()
def assign(x: torch.Tensor, centroids: torch.Tensor, chunk_rows: int | None = None,
           budget_bytes: int = 256 << 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid by cosine for unit rows. x: (N, D); centroids: (K, D) (same device).
    Returns (best cosine (N,), index (N,) int64)."""
    rows = chunk_rows or _chunk_rows(centroids.shape[0], budget_bytes)
    best = torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
    idx = torch.empty(x.shape[0], device=x.device, dtype=torch.int64)
    for lo in range(0, x.shape[0], rows):
        sim = x[lo:lo + rows] @ centroids.t()
        best[lo:lo + rows], idx[lo:lo + rows] = sim.max(dim=1)
    return best, idx


def _kmeanspp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding on cosine distance: each next centre drawn with probability ~ (1 - best cos)^2."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen).item())
    chosen = [first]
    best = (x @ x[first]).float()
    for _ in range(1, k):
        d = (1.0 - best).clamp_min(0).pow(2)
        total = float(d.sum())
        if total <= 0:  # every point coincides with a centre already: fall back to an unused point
            unused = torch.ones(n, dtype=torch.bool, device=x.device)
            unused[torch.tensor(chosen, device=x.device)] = False
            nxt = int(torch.nonzero(unused)[0].item())
        else:
            nxt = int(torch.multinomial((d / total).cpu().double(), 1, generator=gen).item())
        chosen.append(nxt)
        best = torch.maximum(best, (x @ x[nxt]).float())
    return x[torch.tensor(chosen, device=x.device)].clone()


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, k: int, *, iterations: int = 20, seed: int = 0, init: str = "auto",
                     tol: float = 1e-5, device: str | torch.device | None = None, budget_bytes: int = 256 << 20,
                     verbose: bool = False) -> KMeansResult:
    """Fit K unit centroids to the rows of `x` (L2-normalised here).

    Args:
        x: (N, D) embeddings, any float dtype, any device; N >= k.
        k: number of centroids. iterations: at most this many Lloyd iterations (0 = init only).
        seed: makes init (and re-seeding) reproducible. init: auto | kmeans++ | random.
        tol: stop when the objective improves by less than this (absolute mean cosine) in one iteration.
        device: where to cluster (default: x's device). budget_bytes: similarity block per chunk.
    Raises ValueError on N < k, k < 1 or an unknown init.
    """
    if init not in ("auto", "kmeans++", "random"):
        raise ValueError(f"init must be auto, kmeans++ or random, got '{init}'")
    if k < 1 or x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"spherical k-means needs a 2-D input with at least k={k} rows, got shape {tuple(x.shape)}")
    dev = torch.device(device) if device is not None else x.device
    x = F.normalize(x.to(dev, torch.float32), dim=1)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    how = ("kmeans++" if k <= KMEANSPP_MAX_K else "random") if init == "auto" else init
    seeds = None if how == "kmeans++" else torch.randperm(x.shape[0], generator=gen)[:k].to(dev)
    centroids = _kmeanspp(x, k, gen) if seeds is None else x[seeds].clone()
    rows = _chunk_rows(k, budget_bytes)
    best, idx = assign(x, centroids, rows)
    history = [float(best.mean())]
    reseeded, done = 0, 0
    for it in range(iterations):
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        new = F.normalize(sums, dim=1)
        if empty.numel():
            # The points their centroids fit worst become the new centres (distinct points).
            worst = torch.argsort(best)[: empty.numel()]
            new[empty] = x[worst]
            reseeded += int(empty.numel())
        centroids = new
        best, idx = assign(x, centroids, rows)
        history.append(float(best.mean()))
        done = it + 1
        if verbose:
            print(f"[rob_ray] k-means iteration {done}: mean cosine {history[-1]:.5f}, {int(empty.numel())} empty "
                  "clusters re-seeded", flush=True)
        if not empty.numel() and abs(history[-1] - history[-2]) < tol:
            break
    counts = torch.bincount(idx, minlength=k)
    if not math.isfinite(history[-1]):
        raise ValueError("spherical k-means produced a non-finite objective; the embeddings hold NaN/inf")
    return KMeansResult(centroids=centroids.float().cpu(), assignments=idx.cpu(), counts=counts.cpu(),
                        objective=history[-1], iterations=done, init=how, history=history, reseeded=reseeded)
