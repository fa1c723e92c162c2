"""Linear classifiers on frozen features (plain torch, no sklearn).

- `linear_probe`: softmax regression trained by SGD (momentum 0.9, cosine LR, as in DINO's
  eval_linear.py) on standardised features; a small LR x weight-decay grid is selected on a
  stratified held-out part of the training features, then the best setting is retrained on all
  training features and evaluated once on the test set.
- `fit_logistic`: L2-regularised multinomial logistic regression solved to convergence with
  full-batch L-BFGS on L2-normalised features -- the low-shot classifier of MSN (Assran et al. 2022,
  logistic regression with lambda = 0.0025 via cyanure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rob_ray.errors import EvalInputError

__all__ = ["accuracy", "fit_logistic", "linear_probe", "stratified_split", "train_linear"]


def accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 % of the linear classifier x @ W.T + b. x: (N, D), W: (C, D), b: (C,)."""
    return float(((x @ weight.T + bias).argmax(1) == y).float().mean() * 100)


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) index arrays: `val_fraction` of every class (at least one) held out, seeded."""
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    fit, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = max(1, round(val_fraction * len(idx))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mu, sd = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return [(t - mu) / sd for t in (train, *others)]


def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, lr: float, weight_decay: float,
                 epochs: int = 100, batch_size: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD softmax regression. x: (N, D) float, y: (N,) int64. Returns (W (C, D), b (C,)).

    Zero-initialised, momentum 0.9, cosine LR from `lr` to 0 over all steps, seeded shuffling.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    total = max(epochs * steps_per_epoch, 1)
    step = 0
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=g).split(batch_size):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(x[idx] @ w.T + b, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return w.detach(), b.detach()


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, lrs: Sequence[float] = (0.01, 0.1, 1.0),
                 weight_decays: Sequence[float] = (0.0, 1e-4, 1e-3), val_fraction: float = 0.2, epochs: int = 100,
                 batch_size: int = 256, seed: int = 0) -> dict:
    """Grid-searched linear probe. Features (N, D); labels (N,) int64.

    Returns {"best_lr", "best_weight_decay", "val_top1" (best, %), "test_top1" (%), "grid": [...]}.
    """
    x, y = train_features.float(), train_labels.long()
    xt, yt = test_features.float(), test_labels.long()
    c = int(max(int(y.max()), int(yt.max())) + 1)
    fit_idx, val_idx = stratified_split(y, val_fraction, seed)
    if len(val_idx) == 0 or len(fit_idx) == 0:
        raise EvalInputError("the linear probe needs at least 2 training images per class for its train/val split")
    xf, xv = _standardise(x[fit_idx], x[val_idx])
    grid = []
    for lr in lrs:
        for wd in weight_decays:
            w, b = train_linear(xf, y[fit_idx], c, lr=lr, weight_decay=wd, epochs=epochs, batch_size=batch_size,
                                seed=seed)
            grid.append({"lr": lr, "weight_decay": wd, "val_top1": accuracy(w, b, xv, y[val_idx])})
    best = max(grid, key=lambda r: r["val_top1"])  # first of equals: the smallest lr / wd
    xa, xta = _standardise(x, xt)
    w, b = train_linear(xa, y, c, lr=best["lr"], weight_decay=best["weight_decay"], epochs=epochs,
                        batch_size=batch_size, seed=seed)
    return {"best_lr": best["lr"], "best_weight_decay": best["weight_decay"], "val_top1": best["val_top1"],
            "test_top1": accuracy(w, b, xta, yt), "grid": grid}


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, l2: float = 0.0025, max_iter: int = 300
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: min mean CE(xW^T + b, y) + l2/2 ||W||^2, full-batch L-BFGS.

    x: (N, D) -- L2-normalise it first for the MSN protocol; y: (N,) int64. Returns (W (C, D), b (C,)).
    Deterministic (no sampling), float64 for a well-converged optimum on tiny low-shot sets.
    """
    x64 = x.double()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(x64 @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()
