"""Online evaluation off the training path (`eval.online_knn_mode=async`; plain torch, no Ray).

At an epoch end rank 0 copies the student's weights into a private copy of the model and hands it to
one background thread, which runs the same `EpochEvaluator._compute` (online k-NN + collapse
diagnostics) while training goes on. A finished result is reported at the next logging step, with
`eval_step`: the step whose weights it describes (`online_knn_epoch` is that step's epoch too). Every
rank reports the same numbers at the same steps: rank 0 broadcasts "a result is ready" (and the
result) at every logging step, so Ray Train's report barrier, Tune and a multi-student run's
early-stopping rungs see one consistent value.

Why a thread on rank 0 and not Ray Train's asynchronous validation (`ValidationConfig`, alpha in
Ray 2.60): there, the validation function's metrics are merged into Ray's checkpoint record only
(`ValidationManager` -> `CheckpointManager.update_checkpoints_with_validation_result`); user
callbacks such as Tune's `TuneReportCallback` see the training reports alone, so a sweep would
never get `online_knn_top1`. It also needs a checkpoint at every evaluation point, runs at most one
validation at a time in a fresh task (re-decoding the held-out images each time), and exists only
under Ray Train (not in-process runs or on a GPU box without Ray). Here the held-out images stay
decoded in the worker and the numbers flow through the same metrics as inline evaluation.

At most one evaluation is in flight: an epoch end that finds the previous one still running waits
for it (training then stalls for the remainder, never more), so each result is reported at the
latest at the next epoch end. The last step waits for everything, so the final report, the
checkpoint and Tune get the last step's result; the one before it, when still unreported, gets a
metrics row of its own at its step (`log_row`). With
`run.checkpoint_score_metric` naming one of these metrics, the best checkpoint is written from the
evaluated copy (the student's weights at `eval_step`, its step and config), in the background thread.
A crash loses the evaluation in flight (its step's checkpoint, when one was taken, is unaffected).

`eval.online_knn_mode=actor` keeps this protocol and moves the evaluation onto a Ray actor with
resources of its own (`rob_ray.eval.ray_online`, imported by `build_epoch_evaluator` in that mode only).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from rob_ray.eval.online import N_VALUES, EpochEvaluator

__all__ = ["EVAL_METRICS", "AsyncEpochEvaluator", "build_epoch_evaluator"]

_NAN = float("nan")
# Metrics an evaluation produces: a best checkpoint scored by one of them is kept by the evaluator.
EVAL_METRICS = ("online_knn_top1", "online_linear_top1", "embedding_std", "probe_prototypes_used")


class AsyncEpochEvaluator(EpochEvaluator):
    """`EpochEvaluator` whose evaluations run in a background thread on rank 0.

    Args (beyond `EpochEvaluator`'s):
        best: rank 0's `BestCheckpoint` (None elsewhere / when none is kept); updated here when
            its metric is one of `EVAL_METRICS`.
        config: the run's resolved config (a dict), stored in the best checkpoint.
        log_row: rank 0's metrics-row writer, for a result the last step's report supersedes.
    """

    _in_thread = True  # False in a subclass that evaluates elsewhere (`rob_ray.eval.ray_online`)

    def __init__(self, eval_cfg: Any, *, best: Any = None, config: dict[str, Any] | None = None,
                 log_row: Callable[[dict[str, Any]], None] | None = None, **kwargs: Any) -> None:
        super().__init__(eval_cfg, **kwargs)
        self.best = best if best is not None and best.metric in EVAL_METRICS else None
        self.config, self.log_row = config, log_row
        here = self.rank == 0 and self._in_thread
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rob_ray_eval") if here else None
        self._pending: Any = None  # a Future (or anything with done() / result())
        self._ready: list[tuple[int, bool, list[float]]] = []
        self._copy: nn.Module | None = None
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" and here else None

    @property
    def keeps_best(self) -> bool:
        return self.best is not None

    def __call__(self, done: int, student: nn.Module, probe: torch.Tensor) -> dict[str, float]:
        """Every rank, at every logging step: submit at an evaluation point; report what finished."""
        row = torch.full((3 + N_VALUES,), _NAN, dtype=torch.float64)
        if self.rank == 0:
            if self.due(done):
                self._submit(done, student, probe, self.knn_due(done))
            if done == self.end:
                self.close()  # the final report carries the last step's result
            self._collect()
            if self._ready:
                for older in self._ready[:-1]:  # the last step's predecessor: a row of its own, at its step
                    self._log_superseded(*older)
                step, run_knn, values = self._ready[-1]
                self._ready.clear()
                row = torch.tensor([1.0, step, float(run_knn), *values], dtype=torch.float64)
        if self.world_size > 1 and torch.distributed.is_initialized():
            row = row.to(self.device)
            torch.distributed.broadcast(row, src=0)
            row = row.cpu()
        flag, step, run_knn, *values = row.tolist()
        if flag != 1.0:
            return {}
        return {**self._metrics(int(step), bool(run_knn), values), "eval_step": int(step)}

    def _log_superseded(self, step: int, run_knn: bool, values: list[float]) -> None:
        """A result that finished together with a newer one (only at the last step, which waits for
        both): the report carries the newer one, `log_row` (rank 0's metrics.jsonl) gets this one."""
        if self.log_row is not None:
            self.log_row({"step": step, "epoch": (step - 1) // self.spe, "epochs_done": step / self.spe,
                          **self._metrics(step, run_knn, values, warn=False), "eval_step": step})

    def join(self) -> None:
        """Rank 0: wait until the evaluation in flight (if any) has finished."""
        if self._pending is not None:
            self._ready.append(self._pending.result())
            self._pending = None

    def close(self) -> None:
        self.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _collect(self) -> None:
        if self._pending is not None and self._pending.done():
            self.join()

    def _submit(self, done: int, student: nn.Module, probe: torch.Tensor, run_knn: bool) -> None:
        self.join()  # one in flight: the copy `_start` makes is the one it evaluates
        self._pending = self._start(done, student, probe, run_knn)

    def _start(self, done: int, student: nn.Module, probe: torch.Tensor, run_knn: bool) -> Future:
        """Start evaluating the weights of `student` after `done` steps; returns its pending result
        (`result()` -> (step, run_knn, values as `_compute` returns))."""
        if self._copy is None:
            self._copy = copy.deepcopy(student).requires_grad_(False)
        with torch.no_grad():
            self._copy.load_state_dict(student.state_dict())
        probe = probe if self.bank is not None else probe.detach().clone()
        if self._stream is not None:
            self._stream.wait_stream(torch.cuda.current_stream(self.device))  # the copy is made on this stream
        threads = torch.get_num_threads()
        return self._pool.submit(self._job, done, run_knn, probe, threads)

    def _job(self, step: int, run_knn: bool, probe: torch.Tensor, threads: int) -> tuple[int, bool, list[float]]:
        if self.device.type == "cpu":
            torch.set_num_threads(threads)  # as inline: the same kernels, the same sums
        on_stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with on_stream:
            values = self._compute(self._copy, probe, run_knn)
            if self._stream is not None:
                self._stream.synchronize()
        knn = values[0]
        print(f"[rob_ray] online evaluation of step {step} done" +
              (f": k-NN top-1 {knn:.2f} %" if run_knn and math.isfinite(knn) else ""), flush=True)
        if self.best is not None:
            metrics = self._metrics(step, run_knn, values, warn=False)
            state = {"student": self._copy.state_dict(), "step": step, "config": self.config}
            self.best.update(step, state, metrics)
        return step, run_knn, values


def build_epoch_evaluator(eval_cfg: Any, *, best: Any = None, config: dict[str, Any] | None = None,
                          log_row: Callable[[dict[str, Any]], None] | None = None, shared: dict[str, Any] | None = None,
                          key: str = "student", **kwargs: Any) -> EpochEvaluator:
    """The evaluator `eval.online_knn_mode` asks for (async / actor only matter with online k-NN on).

    Actor mode: `shared` is one dict per training loop (the students of a multi-student run share one
    evaluation actor through it), `key` names this student there. Its Ray module is imported only here.
    """
    if eval_cfg.online_knn_mode == "async" and eval_cfg.online_knn_every_epochs:
        return AsyncEpochEvaluator(eval_cfg, best=best, config=config, log_row=log_row, **kwargs)
    if eval_cfg.online_knn_mode == "actor" and eval_cfg.online_knn_every_epochs:
        from rob_ray.eval.ray_online import ActorEpochEvaluator  # Ray at the edge: imported in actor mode only

        return ActorEpochEvaluator(eval_cfg, best=best, config=config, log_row=log_row,
                                   shared={} if shared is None else shared, key=key, **kwargs)
    return EpochEvaluator(eval_cfg, **kwargs)
