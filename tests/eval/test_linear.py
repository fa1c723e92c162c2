"""Linear probe and logistic regression: known answers, chance level, optimality, the split."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rob_ray.eval.linear import fit_logistic, linear_probe, stratified_split
from tests.eval.test_knn import clusters


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: far faster single-threaded on a busy machine
    yield
    torch.set_num_threads(old)


def test_separable_clusters_reach_100_percent_and_report_the_grid():
    x, y = clusters(200, spread=5.0, seed=0)
    xt = clusters(80, spread=5.0, seed=0)[0] + 0.2
    r = linear_probe(x, y, xt, torch.arange(80) % 4, lrs=(0.01, 0.1), weight_decays=(0.0, 1e-3), epochs=10)
    assert r["test_top1"] == 100.0 and r["val_top1"] == 100.0
    assert len(r["grid"]) == 4 and {(g["lr"], g["weight_decay"]) for g in r["grid"]} == {
        (0.01, 0.0), (0.01, 1e-3), (0.1, 0.0), (0.1, 1e-3)}
    assert (r["best_lr"], r["best_weight_decay"]) in {(g["lr"], g["weight_decay"]) for g in r["grid"]}


def test_shuffled_labels_give_chance():
    x, y = clusters(1200, spread=5.0, seed=1)
    xt, yt = clusters(1200, spread=5.0, seed=2)
    g = torch.Generator().manual_seed(0)
    r = linear_probe(x, y[torch.randperm(1200, generator=g)], xt, yt, lrs=(0.1,), weight_decays=(0.0,), epochs=5)
    # Labels carry no information about the features: 25 % +- 1.25 (1 std over 1200): allow ~5 std.
    assert abs(r["test_top1"] - 25.0) < 6.5, r["test_top1"]


def test_stratified_split_holds_out_each_class_and_is_seeded():
    y = torch.tensor([0] * 10 + [1] * 20 + [2] * 5)
    fit, val = stratified_split(y, 0.2, seed=4)
    assert sorted(set(fit.tolist()) | set(val.tolist())) == list(range(35)) and not set(fit) & set(val)
    assert [int((y[val] == c).sum()) for c in range(3)] == [2, 4, 1]
    fit2, val2 = stratified_split(y, 0.2, seed=4)
    assert (val == val2).all() and (fit == fit2).all()


def test_logistic_regression_reaches_the_regularised_optimum():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(40, 10, generator=g), dim=1)
    y = torch.randint(0, 3, (40,), generator=g)
    w, b = fit_logistic(x, y, 3, l2=0.01)
    # Stationarity of mean CE + l2/2 ||W||^2, checked with autograd in float64 at the returned point.
    w64, b64 = w.double().requires_grad_(), b.double().requires_grad_()
    loss = F.cross_entropy(x.double() @ w64.T + b64, y) + 0.005 * (w64 * w64).sum()
    gw, gb = torch.autograd.grad(loss, (w64, b64))
    assert gw.abs().max() < 1e-4 and gb.abs().max() < 1e-4
