"""Weighted k-NN classification on frozen features (DINO eval_knn.py protocol, Wu et al. 2018).

Cosine similarity to the memory bank, top-k neighbours, votes weighted by exp(sim / T);
DINO reports k in {10, 20, 100, 200} with T = 0.07.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rob_ray.errors import EvalInputError

__all__ = ["KNN_KS", "knn_accuracies", "knn_predict", "knn_top1"]

KNN_KS = (10, 20, 100, 200)


@torch.no_grad()
def _votes(sim: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor, k: int, temperature: float, c: int
           ) -> torch.Tensor:
    weights = (sim[:, :k] / temperature).exp()
    votes = torch.zeros(sim.shape[0], c, device=sim.device)
    return votes.scatter_add_(1, labels[idx[:, :k]], weights)


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Class scores (N_test, C) from a weighted cosine k-NN vote.

    Args:
        train_features: (N_train, D); train_labels: (N_train,) int64 in [0, C).
        test_features: (N_test, D).
        k: neighbours (clipped to N_train). temperature: vote sharpness T.
    """
    if train_features.shape[0] == 0:
        raise EvalInputError("k-NN needs a non-empty memory bank")
    c = int(num_classes or int(train_labels.max()) + 1)
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    scores = []
    for q in F.normalize(test_features.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        scores.append(_votes(sim, idx, labels, k, temperature, c))
    return torch.cat(scores)


def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in percent."""
    c = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    pred = knn_predict(train_features, train_labels, test_features, k, temperature, c).argmax(1)
    return float((pred == test_labels.long()).float().mean() * 100)


@torch.no_grad()
def knn_accuracies(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, ks: Sequence[int] = KNN_KS, temperature: float = 0.07,
                   chunk: int = 1024) -> dict[int, float]:
    """Top-1 % for every k in `ks` from one similarity pass (neighbours sorted once, largest k).

    Each k is clipped to the memory-bank size. Same result as `knn_top1` per k.
    """
    if train_features.shape[0] == 0:
        raise EvalInputError("k-NN needs a non-empty memory bank")
    c = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    kmax = min(max(ks), train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    labels, targets = train_labels.long(), test_labels.long()
    correct = dict.fromkeys(ks, 0)
    for q, t in zip(F.normalize(test_features.float(), dim=1).split(chunk), targets.split(chunk)):
        sim, idx = (q @ bank.T).topk(kmax, dim=1)  # sorted: the first k columns are the k nearest
        for k in ks:
            pred = _votes(sim, idx, labels, min(k, kmax), temperature, c).argmax(1)
            correct[k] += int((pred == t).sum())
    n = max(test_features.shape[0], 1)
    return {k: 100.0 * correct[k] / n for k in ks}
