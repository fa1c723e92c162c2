"""The fitted head as a DINO-layout state_dict, and what its targets look like at each temperature.

Layout (what `teacher.head_checkpoint` / `load_head_checkpoint` already read, no new format):
`mlp.weight` = I (D x D), `mlp.bias` = 0, `last_layer.weight_v` = the K unit prototypes,
`last_layer.weight_g` = 1. DINOHead computes last_layer(normalise(mlp(x))), so with an identity
one-layer MLP and unit-gain weight norm its logits are exactly cos(embedding, prototype) in [-1, 1] —
the same scale as a DINO head's (whose last layer is weight-normalised over an L2-normalised
bottleneck), which is why DINO's teacher temperatures (0.04-0.07) are the right range here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["TEMPERATURES", "head_state_from_prototypes", "recommend_temperature", "size_histogram", "target_stats"]

TEMPERATURES = (0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.2)
TARGET_TOP1 = 0.5  # the recommended temperature gives the median image half its mass on its nearest prototype


def head_state_from_prototypes(prototypes: torch.Tensor) -> dict[str, torch.Tensor]:
    """(K, D) prototypes -> DINO-layout head state_dict (float32, unit prototype rows)."""
    protos = F.normalize(prototypes.detach().float().cpu(), dim=1)
    k, d = protos.shape
    return {"mlp.weight": torch.eye(d), "mlp.bias": torch.zeros(d), "last_layer.weight_g": torch.ones(k, 1),
            "last_layer.weight_v": protos.contiguous()}


@torch.no_grad()
def target_stats(embeddings: torch.Tensor, prototypes: torch.Tensor, temperatures: Sequence[float] = TEMPERATURES,
                 max_rows: int = 8192, chunk: int = 1024) -> list[dict[str, float]]:
    """Per temperature: mean per-image target entropy (nats) and its exp (effective prototypes per
    image), median top-1 probability, and usage: entropy of the mean target as a fraction of log K
    (1 = every prototype equally used) and its exp (effective prototypes over the sample)."""
    x = F.normalize(embeddings[:max_rows].float(), dim=1)
    p = F.normalize(prototypes.float().to(x.device), dim=1)
    k = p.shape[0]
    out = []
    for tau in temperatures:
        ent, top1, mean_p = [], [], torch.zeros(k, dtype=torch.float64, device=x.device)
        for lo in range(0, x.shape[0], chunk):
            logp = F.log_softmax((x[lo:lo + chunk] @ p.t()) / tau, dim=1)
            probs = logp.exp()
            ent.append(-(probs * logp).sum(1))
            top1.append(probs.max(1).values)
            mean_p += probs.sum(0).double()
        ent_t, top1_t = torch.cat(ent), torch.cat(top1)
        mean_p /= x.shape[0]
        usage = float(-(mean_p * mean_p.clamp_min(1e-300).log()).sum())
        out.append({"teacher_temp": float(tau), "entropy": float(ent_t.mean()), "perplexity": math.exp(float(ent_t.mean())),
                    "median_top1": float(top1_t.median()), "usage_entropy_frac": usage / math.log(k) if k > 1 else 1.0,
                    "usage_perplexity": math.exp(usage)})
    return out


def recommend_temperature(stats: list[dict[str, float]], lo: float = 0.02, hi: float = 0.1) -> float:
    """The temperature (interpolated in log space between the measured ones) at which the median
    image puts TARGET_TOP1 of its mass on its nearest prototype: peaked, not one-hot. Clipped to [lo, hi]."""
    pts = sorted((s["teacher_temp"], s["median_top1"]) for s in stats)
    if pts[0][1] < TARGET_TOP1:  # even the sharpest temperature is flat: take the sharpest allowed
        return lo
    for (t0, p0), (t1, p1) in itertools.pairwise(pts):
        if p0 >= TARGET_TOP1 >= p1:
            w = 0.0 if p0 == p1 else (p0 - TARGET_TOP1) / (p0 - p1)
            tau = math.exp(math.log(t0) + w * (math.log(t1) - math.log(t0)))
            return round(min(max(tau, lo), hi), 3)
    return hi


def size_histogram(counts: torch.Tensor) -> dict[str, int]:
    """Cluster sizes in power-of-two bins: {"0": empty, "1": singletons, "2-3", "4-7", ...}."""
    hist: dict[str, int] = {}
    c = counts.long()
    hist["0"] = int((c == 0).sum())
    top = int(c.max()) if c.numel() else 0
    lo = 1
    while lo <= max(top, 1):
        hi = 2 * lo - 1
        hist[str(lo) if lo == hi else f"{lo}-{hi}"] = int(((c >= lo) & (c <= hi)).sum())
        lo *= 2
    return hist
