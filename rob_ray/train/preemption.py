"""Preemption notices: checkpoint at the next step boundary when a node is about to be reclaimed.

Ray Train 2.60 reports an imminent node preemption (a spot reclaim) through
`ray.train.get_preemption_info()` - a collective: every rank calls it the same number of times and
gets rank 0's answer. `PreemptionWatch.check(step)` asks every `every` steps and returns True once
per notice, so the loop saves right after that step instead of at the next scheduled checkpoint;
the restart that follows the reclaim is budgeted by `FailureConfig(max_preemption_failures=...)`,
apart from `max_failures`.

`debug.preempt_at_step` simulates a notice without a cloud: the notice arrives after that step
(once per run folder, a marker file like `FaultInjector`'s), the loop checkpoints, and then the
"node goes": the worker raises `SimulatedPreemption` (or exits hard, `debug.fail_mode=exit`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PreemptionWatch", "SimulatedPreemption", "ray_preemption_probe"]


class SimulatedPreemption(RuntimeError):
    """Raised after the checkpoint of a simulated preemption notice (`debug.preempt_at_step`)."""


def ray_preemption_probe() -> Callable[[], Any] | None:
    """`ray.train.get_preemption_info` when this Ray has it (2.60+), else None."""
    try:
        import ray.train
    except ImportError:
        return None
    return getattr(ray.train, "get_preemption_info", None)


class PreemptionWatch:
    """Args:
        probe: a zero-argument callable returning a notice (truthy) or None, called on every rank at the
            same steps (`ray_preemption_probe()`; None: no real notices, e.g. in-process runs).
        every: ask the probe after every `every`-th step (the call is a barrier over the workers).
        simulate_at: 1-based step after which a simulated notice arrives (None: none).
        run_dir, rank, mode: the marker folder, this rank, and how the simulated node goes
            ("raise" or "exit").
    """

    def __init__(self, probe: Callable[[], Any] | None = None, every: int = 1, simulate_at: int | None = None,
                 run_dir: str | Path = ".", rank: int = 0, mode: str = "raise") -> None:
        self.probe, self.every, self.simulate_at = probe, max(1, every), simulate_at
        self.marker = Path(run_dir) / "faults" / f"preempt_{simulate_at}.fired"
        self.rank, self.mode = rank, mode
        # Decided once, before any rank can write the marker: every rank takes the same decision.
        self.armed = simulate_at is not None and not self.marker.exists()
        self.noticed = False  # a notice was acted on (one just-in-time checkpoint per notice)
        self.pending_exit = False
        self.info: Any = None

    def check(self, step: int) -> bool:
        """After 1-based step `step`: True when a new notice says to checkpoint now (same on every rank)."""
        if self.armed and step == self.simulate_at:
            self.armed, self.pending_exit = False, True
            if self.rank == 0:  # before the save: the restarted group must not get the notice again
                self.marker.parent.mkdir(parents=True, exist_ok=True)
                with open(self.marker, "w") as f:
                    f.write(f"step {step}\n")
                    f.flush()
                    os.fsync(f.fileno())
            self.info = f"simulated (debug.preempt_at_step={self.simulate_at})"
            return True
        if self.probe is None or self.noticed or step % self.every:
            return False
        info = self.probe()
        if info is None:
            return False
        self.noticed, self.info = True, info
        return True

    def describe(self) -> str:
        info = self.info
        ranks = getattr(info, "preempted_ranks", None)
        deadline = getattr(info, "deadline_ms", None)
        parts = [f"ranks {ranks}" if ranks else None, f"deadline {deadline} ms" if deadline else None]
        return ", ".join(p for p in parts if p) or str(info)

    def after_save(self, step: int) -> None:
        """Say so; a simulated notice then takes its node away (after every rank saved and reported)."""
        if self.rank == 0:
            print(f"[rob_ray] preemption notice at step {step}: checkpoint saved ({self.describe()})", flush=True)
        if not self.pending_exit:
            return
        self.pending_exit = False
        if self.mode == "exit":
            os._exit(1)
        raise SimulatedPreemption(f"debug.preempt_at_step: simulated preemption after step {step}")
