"""Independent float64 reference maths for the objective tests: plain Python loops, no torch ops."""

from __future__ import annotations

import math


def rows(t) -> list[list[float]]:
    return [[float(x) for x in r] for r in t.double().tolist()]


def log_softmax(row: list[float], temp: float) -> list[float]:
    z = [x / temp for x in row]
    m = max(z)
    lse = m + math.log(sum(math.exp(x - m) for x in z))
    return [x - lse for x in z]


def softmax(row: list[float], temp: float) -> list[float]:
    return [math.exp(x) for x in log_softmax(row, temp)]


def sinkhorn(scores: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """SwAV's Sinkhorn-Knopp, sample by sample and prototype by prototype (no max subtraction)."""
    b, k = len(scores), len(scores[0])
    p = [[math.exp(s / eps) for s in r] for r in scores]  # p[sample][prototype]
    total = sum(sum(r) for r in p)
    p = [[x / total for x in r] for r in p]
    for _ in range(iters):
        for j in range(k):
            mass = sum(p[i][j] for i in range(b))
            for i in range(b):
                p[i][j] *= (1.0 / k) / mass
        for i in range(b):
            mass = sum(p[i])
            p[i] = [x * (1.0 / b) / mass for x in p[i]]
    return [[x / sum(r) for x in r] for r in p]


def pairs(g: int, v: int, num_global: int, pairing: str) -> list[tuple[int, int]]:
    out = []
    for i in range(g):
        for j in range(v):
            ok = (j != i) if pairing == "swapped" else (g == 1 or j == i or j >= num_global)
            if ok:
                out.append((i, j))
    return out


def cross_entropy(target: list[float], student_row: list[float], temp: float) -> float:
    return -sum(t * s for t, s in zip(target, log_softmax(student_row, temp), strict=True))
