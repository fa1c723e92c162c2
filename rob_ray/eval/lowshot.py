"""Low-shot evaluation (MSN protocol, Assran et al. 2022, Sec. 5.1): logistic regression on 1, 2, 5
labelled images per class and on 1 % of the labels, over several seeded draws, mean +- std."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rob_ray.errors import EvalInputError
from rob_ray.eval.linear import accuracy, fit_logistic

__all__ = ["lowshot_eval", "lowshot_indices"]


def lowshot_indices(labels: torch.Tensor | np.ndarray, *, shots: int | None = None, fraction: float | None = None,
                    seed: int = 0) -> np.ndarray:
    """A class-balanced labelled subset: `shots` images of every class, or `fraction` of each class
    (at least one). Seeded: the same seed gives the same (sorted) indices. Raises ValueError."""
    if (shots is None) == (fraction is None):
        raise ValueError("give exactly one of shots / fraction")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = shots if shots is not None else max(1, round(fraction * len(idx)))
        if n > len(idx):
            raise EvalInputError(f"class {int(c)} has {len(idx)} training images; {n}-shot needs at least {n}")
        picked.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(picked))


def lowshot_eval(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, shots: Sequence[int] = (1, 2, 5), fractions: Sequence[float] = (0.01,),
                 num_draws: int = 3, seed: int = 0, l2: float = 0.0025) -> dict[str, dict]:
    """Top-1 % per setting: {"1-shot": {"mean", "std", "runs": [...], "images": n}, ..., "1%": {...}}.

    Features are L2-normalised (MSN); draw d of every setting uses seed `seed + d`; std is the
    population std over draws (0 for one draw).
    """
    x, xt = F.normalize(train_features.float(), dim=1), F.normalize(test_features.float(), dim=1)
    y, yt = train_labels.long(), test_labels.long()
    c = int(max(int(y.max()), int(yt.max())) + 1)
    settings = [(f"{s}-shot", {"shots": s}) for s in shots]
    settings += [(f"{f * 100:g}%", {"fraction": f}) for f in fractions]
    out = {}
    for name, kw in settings:
        runs, n = [], 0
        for d in range(num_draws):
            idx = torch.from_numpy(lowshot_indices(y.numpy(), seed=seed + d, **kw))
            w, b = fit_logistic(x[idx], y[idx], c, l2=l2)
            runs.append(accuracy(w, b, xt, yt))
            n = len(idx)
        out[name] = {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": runs, "images": n}
    return out
