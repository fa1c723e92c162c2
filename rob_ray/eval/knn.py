"""Weighted k-NN classification on frozen features (DINO eval_knn.py protocol, Wu et al. 2018).

Cosine similarity to the memory bank, top-k neighbours, votes weighted by exp(sim / T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_predict", "knn_top1"]


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
        raise ValueError("k-NN needs a non-empty memory bank")
    c = int(num_classes or int(train_labels.max()) + 1)
    k = min(k, train_features.shape[0])
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    scores = []
    for q in F.normalize(test_features.float(), dim=1).split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(q.shape[0], c, device=q.device)
        votes.scatter_add_(1, labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in percent."""
    c = int(max(int(train_labels.max()), int(test_labels.max())) + 1)
    pred = knn_predict(train_features, train_labels, test_features, k, temperature, c).argmax(1)
    return float((pred == test_labels.long()).float().mean() * 100)
