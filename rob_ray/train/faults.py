"""Faults during training: injected worker failures (for resume tests) and non-finite steps.

`FaultInjector` makes one rank raise, `os._exit(1)` or hang during chosen steps, once per run folder
(a marker file records each failure that fired, so the restarted worker group gets past it).
`NonFiniteGuard` decides, in lock-step on every rank, whether a step's loss and gradients are
finite; a non-finite step is skipped (no optimiser update; buffers such as BatchNorm statistics and
the method's centre are restored to their values before the step), and too many
in a row stop the run with the pre-fault weights checkpointed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["FaultInjector", "InjectedFault", "NonFiniteGuard", "TrainingStopped"]


class InjectedFault(RuntimeError):
    """Raised by `FaultInjector` in `fail_mode=raise`."""


class TrainingStopped(RuntimeError):
    """The run stopped on purpose before its last step (e.g. too many non-finite steps); one-line message."""


class FaultInjector:
    """Fails `rank == fail_rank` during each step in `fail_at_steps` (1-based, as metrics' `step`),
    only the first time that step is reached in this run folder.

    The marker `<run_dir>/faults/step_<N>.fired` is written (and fsynced) before failing, so a
    restart from an older checkpoint replays step N without failing again.
    """

    def __init__(self, fail_at_steps: Iterable[int], fail_mode: str, fail_rank: int, run_dir: str | Path,
                 rank: int, nonfinite_at_steps: Iterable[int] = ()) -> None:
        self.steps = set(fail_at_steps) if rank == fail_rank else set()
        self.mode = fail_mode
        self.rank = rank
        self.dir = Path(run_dir) / "faults"
        self.nonfinite = set(nonfinite_at_steps)

    @classmethod
    def from_config(cls, debug: Any, run_dir: str | Path, rank: int) -> FaultInjector:
        return cls(debug.fail_at_steps, debug.fail_mode, debug.fail_rank, run_dir, rank, debug.nonfinite_at_steps)

    def fired(self, step: int) -> bool:
        return (self.dir / f"step_{step}.fired").exists()

    def before_step(self, step: int) -> None:
        """Call with the 1-based step about to be computed (after its batch arrived)."""
        if step not in self.steps or self.fired(step):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = self.dir / f"step_{step}.fired"
        with open(marker, "w") as f:
            f.write(f"rank {self.rank} mode {self.mode}\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"[rob_ray] debug: injected failure ({self.mode}) on rank {self.rank} during step {step}", flush=True)
        if self.mode == "exit":
            os._exit(1)  # a hard crash: no exception handling, no cleanup, like a lost machine
        if self.mode == "hang":
            threading.Event().wait()  # a machine on its way out: the other ranks wait at the next collective
        raise InjectedFault(f"debug.fail_at_steps: injected failure on rank {self.rank} during step {step}")

    def poison(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """`debug.nonfinite_at_steps`: the loss becomes NaN (so do its gradients) at those steps."""
        return loss * float("nan") if step in self.nonfinite else loss


class NonFiniteGuard:
    """Skips steps whose loss or gradient norm is NaN/Inf on any rank; stops after `max_in_a_row`.

    The finite flag is all-reduced (MIN) so every DDP rank takes the same decision. Reading it on
    the host costs one device sync per step on GPU: unavoidable when the step must be skipped
    before `optimizer.step()` changes the weights (the alternative, GradScaler's in-kernel skip,
    exists only for some optimisers).
    """

    def __init__(self, max_in_a_row: int, world_size: int = 1) -> None:
        self.max_in_a_row = max_in_a_row
        self.world_size = world_size
        self.total = 0  # non-finite steps over the whole run (checkpointed)
        self.in_a_row = 0
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def remember(self, *modules: torch.nn.Module) -> None:
        """Copy the modules' buffers before the forward pass: BatchNorm running statistics and a
        method's centre change in the forward, and a skipped step must leave them as they were."""
        self._saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]

    def step_ok(self, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter],
                grad_norm: torch.Tensor | None = None) -> bool:
        """True when this step may update the weights. `grad_norm`: the total norm if already computed
        (e.g. returned by `clip_grad_norm_`), else it is computed here."""
        if grad_norm is None:
            grads = [p.grad for p in parameters if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        flag = (torch.isfinite(loss.detach()) & torch.isfinite(grad_norm.to(loss.device))).to(torch.int32)
        if self.world_size > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        ok = bool(flag.item())
        if ok:
            self.in_a_row = 0
        else:
            self.total += 1
            self.in_a_row += 1
            with torch.no_grad():
                for live, copy in self._saved:
                    live.copy_(copy)
        self._saved = []
        return ok

    @property
    def should_stop(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def stop_message(self, done: int, saved_step: int) -> str:
        return (f"training stopped: {self.in_a_row} non-finite steps in a row (steps {done - self.in_a_row + 1}-{done}: "
                f"loss or gradient is NaN/Inf; limit run.max_nonfinite_steps={self.max_in_a_row}); the checkpoint at "
                f"step {saved_step} holds the weights from before the fault; lower optim.lr, set optim.clip_grad or "
                "run.precision=fp32, then relaunch the same run.name to resume")

    def state_dict(self) -> dict[str, int]:
        return {"total": self.total}

    def load_state_dict(self, state: dict[str, int] | None) -> None:
        self.total = int((state or {}).get("total", 0))
