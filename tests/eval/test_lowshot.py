"""Low-shot draws are balanced and reproducible; the protocol finds known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rob_ray.eval.lowshot import lowshot_eval, lowshot_indices
from tests.eval.test_knn import clusters


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


LABELS = np.repeat(np.arange(5), [30, 40, 50, 60, 220])


@pytest.mark.parametrize("shots", [1, 2, 5])
def test_draws_are_balanced_reproducible_and_differ_by_seed(shots):
    a = lowshot_indices(LABELS, shots=shots, seed=0)
    assert np.bincount(LABELS[a], minlength=5).tolist() == [shots] * 5 and len(set(a.tolist())) == len(a)
    assert np.array_equal(a, lowshot_indices(LABELS, shots=shots, seed=0))
    assert not all(np.array_equal(a, lowshot_indices(LABELS, shots=shots, seed=s)) for s in (1, 2, 3))


def test_fraction_takes_one_percent_of_each_class_at_least_one():
    idx = lowshot_indices(LABELS, fraction=0.01, seed=0)
    assert np.bincount(LABELS[idx], minlength=5).tolist() == [1, 1, 1, 1, 2]  # round(2.2) = 2


def test_too_few_images_is_a_clear_error():
    with pytest.raises(ValueError, match="class 0 has 30 training images; 31-shot"):
        lowshot_indices(LABELS, shots=31, seed=0)


def test_separable_clusters_give_100_and_no_spread():
    x, y = clusters(200, spread=5.0, seed=0)
    xt = clusters(80, spread=5.0, seed=0)[0] + 0.1
    r = lowshot_eval(x, y, xt, torch.arange(80) % 4, shots=(1, 5), fractions=(0.1,), num_draws=3)
    assert set(r) == {"1-shot", "5-shot", "10%"}
    for name, v in r.items():
        assert v["mean"] == 100.0 and v["std"] == 0.0 and len(v["runs"]) == 3, name
    assert r["1-shot"]["images"] == 4 and r["5-shot"]["images"] == 20 and r["10%"]["images"] == 20  # 10 % of 50 per class


def test_features_unrelated_to_labels_give_chance():
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(400, 16, generator=g), torch.randn(2000, 16, generator=g)
    y, yt = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (2000,), generator=g)
    r = lowshot_eval(x, y, xt, yt, shots=(5,), fractions=(), num_draws=4)
    # Each draw: 25 % +- ~1 point on 2000 queries; the mean of 4 draws well within 4 points.
    assert abs(r["5-shot"]["mean"] - 25.0) < 4.0 and r["5-shot"]["std"] == pytest.approx(np.std(r["5-shot"]["runs"]))
