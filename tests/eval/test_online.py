"""Online k-NN and collapse diagnostics inside the training loop (local run, no Ray)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from rob_ray.config import load_config
from rob_ray.eval.knn import knn_top1
from rob_ray.eval.online import EpochEvaluator, embedding_std


def test_online_knn_is_in_metrics_at_each_epoch_end(tiny_run):
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    knn_rows = [r for r in rows if "online_knn_top1" in r]
    assert [r["step"] for r in knn_rows] == [5, 10] and [r["online_knn_epoch"] for r in knn_rows] == [1.0, 2.0]
    for r in knn_rows:
        top1 = r["online_knn_top1"]  # 20 queries: a multiple of 5 %, up to float32 rounding
        assert 0.0 <= top1 <= 100.0 and abs(top1 / 5 - round(top1 / 5)) < 1e-5
        assert 0 < r["embedding_std"] < 1 and r["embedding_std_healthy"] > 0 and r["probe_prototypes_used"] >= 1
    assert all("online_knn_top1" not in r for r in rows if r["step"] % 5)  # not between epoch ends


def test_embedding_std_known_values():
    assert embedding_std(torch.ones(10, 6) * 3) == 0.0  # one point: collapsed
    d = 8
    # One-hot rows: every column has a single 1 among d rows; its std (ddof=1) is 1/sqrt(d).
    assert math.isclose(embedding_std(torch.eye(d)), 1 / math.sqrt(d), rel_tol=1e-6)


class _Constant(nn.Module):
    """A collapsed student: the same embedding for every image."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], 4)


def test_collapsed_student_triggers_a_warning(capsys):
    cfg = load_config(None, [])
    ev = EpochEvaluator(cfg.eval, rank=0, world_size=1, device=torch.device("cpu"), mean=(0.5,) * 3, std=(0.5,) * 3,
                        size=16, steps_per_epoch=4, end_step=8)
    probe = torch.randn(16, 3, 16, 16)
    assert ev(3, _Constant(), probe) == {}  # mid-epoch: nothing
    out = ev(4, _Constant(), probe)
    assert out["embedding_std"] == 0.0 and out["probe_prototypes_used"] == 1.0 and "online_knn_top1" not in out
    assert "student looks collapsed after 1 epochs" in capsys.readouterr().out
    short = EpochEvaluator(cfg.eval, rank=0, world_size=1, device=torch.device("cpu"), mean=(0.5,) * 3,
                           std=(0.5,) * 3, size=16, steps_per_epoch=4, end_step=2)
    assert short(2, _Constant(), probe)["embedding_std"] == 0.0  # measured at the last step...
    assert "collapsed" not in capsys.readouterr().out  # ...but not judged before one full epoch


def test_online_knn_value_equals_offline_knn_on_the_same_embeddings(labelled_root):
    cfg = load_config(None, ["eval.online_knn_every_epochs=2", f"eval.online_knn_path={labelled_root}",
                             "eval.k=5"])

    class Pixels(nn.Module):  # a deterministic "student": mean colour of 4x4 cells
        def embed(self, x):
            return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    ev = EpochEvaluator(cfg.eval, rank=0, world_size=1, device=torch.device("cpu"), mean=(0.5,) * 3,
                        std=(0.5,) * 3, size=24, steps_per_epoch=3, end_step=9)
    assert "online_knn_top1" not in ev(3, Pixels(), torch.zeros(1))  # epoch 1: not due (every 2)
    got = ev(6, Pixels(), torch.zeros(1))
    bank, queries = ev.bank, ev.queries
    norm = lambda u8: (u8.float() / 255 - 0.5) / 0.5  # noqa: E731
    f = lambda u8: Pixels().embed(norm(u8))  # noqa: E731
    expected = knn_top1(f(bank[0]), bank[1], f(queries[0]), queries[1], k=5)
    assert got["online_knn_top1"] == expected and got["online_knn_epoch"] == 2.0
    assert "online_knn_top1" in ev(9, Pixels(), torch.zeros(1))  # the last step always evaluates


def test_online_linear_top1_on_features_with_a_known_answer():
    """Classes on separate axes: the probe classifies every query right; queries labelled with the next
    class: every one wrong."""
    from rob_ray.eval.online import online_linear_top1

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(8)
    bank = torch.eye(3)[labels] * 5 + 0.1 * torch.rand(24, 3, generator=g)
    queries = torch.eye(3)[labels[::2]] * 5 + 0.1 * torch.rand(12, 3, generator=g)
    assert online_linear_top1(bank, labels, queries, labels[::2]) == 100.0
    assert online_linear_top1(bank, labels, queries, (labels[::2] + 1) % 3) == 0.0


def test_online_linear_value_equals_a_logistic_fit_on_the_same_embeddings(labelled_root):
    """eval.online_linear: `online_linear_top1` is a logistic regression (rob_ray.eval.linear.fit_logistic)
    fitted on the L2-normalised bank embeddings and scored on the queries' (both computed here)."""
    from rob_ray.eval.linear import fit_logistic

    cfg = load_config(None, ["eval.online_knn_every_epochs=1", f"eval.online_knn_path={labelled_root}",
                             "eval.online_linear=true"])

    class Pixels(nn.Module):
        def embed(self, x):
            return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    ev = EpochEvaluator(cfg.eval, rank=0, world_size=1, device=torch.device("cpu"), mean=(0.5,) * 3,
                        std=(0.5,) * 3, size=24, steps_per_epoch=3, end_step=9)
    got = ev(3, Pixels(), torch.zeros(1))
    norm = lambda u8: (u8.float() / 255 - 0.5) / 0.5  # noqa: E731
    unit = lambda u8: nn.functional.normalize(Pixels().embed(norm(u8)), dim=1)  # noqa: E731
    (xb, yb), (xq, yq) = ev.bank, ev.queries
    w, b = fit_logistic(unit(xb), yb, 4)
    predicted = [int(torch.argmax(w @ q + b)) for q in unit(xq)]
    expected = 100.0 * sum(p == int(y) for p, y in zip(predicted, yq, strict=True)) / len(yq)
    assert expected > 0.0 and got["online_linear_top1"] == pytest.approx(expected, abs=1e-4)
    off = EpochEvaluator(load_config(None, ["eval.online_knn_every_epochs=1", f"eval.online_knn_path={labelled_root}"]
                                     ).eval, rank=0, world_size=1, device=torch.device("cpu"), mean=(0.5,) * 3,
                         std=(0.5,) * 3, size=24, steps_per_epoch=3, end_step=9)
    assert "online_linear_top1" not in off(3, Pixels(), torch.zeros(1))  # off by default
