"""Online k-NN and collapse diagnostics inside the training loop (local run, no Ray)."""

from __future__ import annotations

import json
import math

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
