"""Online evaluation off the training path (`eval.online_knn_mode=async`): the same numbers as the
inline evaluation of the same weights, reported later with the step they belong to (no Ray)."""

from __future__ import annotations

import json
import threading

import torch
from torch import nn

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.eval.background import AsyncEpochEvaluator, build_epoch_evaluator
from rob_ray.eval.online import EpochEvaluator
from rob_ray.train import LocalContext, load_state
from rob_ray.train.loop import train_loop
from tests.conftest import tiny_overrides


class _Pixels(nn.Module):
    """A deterministic "student" (mean colour of 4x4 cells) whose embedding waits for `gate`."""

    gate = threading.Event()

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(shift))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        self.gate.wait()
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) + self.shift * torch.arange(48.0)


def _evaluators(labelled_root):
    cfg = load_config(None, ["eval.online_knn_every_epochs=1", f"eval.online_knn_path={labelled_root}", "eval.k=5",
                             "eval.online_knn_mode=async"])
    kw = dict(rank=0, world_size=1, device=torch.device("cpu"), mean=(0.5,) * 3, std=(0.5,) * 3, size=24,
              steps_per_epoch=3, end_step=9)
    rows = []
    return EpochEvaluator(cfg.eval, **kw), build_epoch_evaluator(cfg.eval, log_row=rows.append, **kw), rows


def test_async_result_is_the_inline_one_reported_later_with_its_step(labelled_root):
    inline, ev, rows = _evaluators(labelled_root)
    assert isinstance(ev, AsyncEpochEvaluator)
    student, probe = _Pixels(0.01), torch.zeros(1)
    _Pixels.gate.clear()
    assert ev(3, student, probe) == {}  # epoch 1 submitted; its evaluation waits at the gate
    with torch.no_grad():
        student.shift.fill_(0.5)  # training goes on: the evaluation must see the step-3 weights
    assert ev(4, student, probe) == {}  # not finished: nothing to report yet
    _Pixels.gate.set()
    ev.join()
    got = ev(5, student, probe)
    assert got["eval_step"] == 3 and got["online_knn_epoch"] == 1.0
    expected = inline(3, _Pixels(0.01), probe)
    assert {k: got[k] for k in expected} == expected
    assert ev(5, student, probe) == {}  # reported once
    ev(6, student, probe)  # epoch 2: still unreported when the last step comes
    with torch.no_grad():
        student.shift.fill_(-0.2)
    last = ev(9, student, probe)  # the last step waits for its own evaluation and reports it...
    assert last["eval_step"] == 9 and last == {**inline(9, _Pixels(-0.2), probe), "eval_step": 9}
    # ...and epoch 2's result gets a metrics row of its own, at its step
    assert rows == [{"step": 6, "epoch": 1, "epochs_done": 2.0, **inline(6, _Pixels(0.5), probe), "eval_step": 6}]


def test_async_run_matches_inline_run(labelled_root, tmp_path):
    """Same training, same k-NN values at the same eval steps, same best checkpoint weights."""
    runs = {}
    for mode in ("inline", "async"):
        cfg = load_config(None, tiny_overrides(labelled_root / "train", tmp_path, mode) + [
            "eval.online_knn_every_epochs=1", f"eval.online_knn_path={labelled_root}", "run.log_every_steps=2",
            f"eval.online_knn_mode={mode}", "run.checkpoint_score_metric=online_knn_top1", "optim.epochs=3",
            "optim.lr=0.05", "run.num_to_keep=1"])
        table = scan_images(cfg.data.path)
        threads = torch.get_num_threads()
        final = train_loop(cfg, LocalContext(table, cfg.run_dir(), num_to_keep=1), len(table))
        torch.set_num_threads(threads)
        rows = [json.loads(line) for line in (cfg.run_dir() / "metrics.jsonl").read_text().splitlines()]
        runs[mode] = (cfg.run_dir(), rows, final)
    (in_dir, in_rows, in_final), (as_dir, as_rows, as_final) = runs["inline"], runs["async"]
    inline_knn = {r["step"]: r["online_knn_top1"] for r in in_rows if "online_knn_top1" in r}
    async_knn = {r["eval_step"]: r["online_knn_top1"] for r in as_rows if "online_knn_top1" in r}
    assert sorted(inline_knn) == [5, 10, 15]
    assert async_knn == inline_knn  # every epoch's value, attributed to its own step
    assert all(r["step"] >= r["eval_step"] for r in as_rows if "eval_step" in r)
    assert as_final["eval_step"] == 15 and as_final["online_knn_top1"] == in_final["online_knn_top1"]
    final_a = load_state(sorted((as_dir / "checkpoints").iterdir())[-1])["student"]
    final_i = load_state(sorted((in_dir / "checkpoints").iterdir())[-1])["student"]
    assert all(torch.equal(final_a[k], final_i[k]) for k in final_i)  # evaluation never touches training
    best_a, best_i = load_state(as_dir / "best"), load_state(in_dir / "best")
    assert best_a["step"] == best_i["step"] == min(s for s, v in inline_knn.items() if v == max(inline_knn.values()))
    assert all(torch.equal(best_a["student"][k], best_i["student"][k]) for k in best_i["student"])
