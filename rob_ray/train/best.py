"""The best checkpoint by a metric, kept beside the last K.

Ray's `CheckpointConfig(checkpoint_score_attribute=..., num_to_keep=K)` keeps the K *best*, which
can drop the newest one a run needs to resume; rob_ray keeps Ray's last K untouched and writes the
best one itself to `<run_dir>/best/` (rank 0, atomically: a complete new copy is renamed into place).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

from rob_ray.train.checkpoint import META_FILE, save_state

__all__ = ["BestCheckpoint"]


class BestCheckpoint:
    """Keeps `<run_dir>/best` = the state with the best value of `metric` seen so far.

    Args:
        run_dir: the run folder.
        metric: metric name (e.g. `online_knn_top1`, `loss`); steps whose metrics lack it are ignored.
        mode: "max" or "min".
        name: a student of a multi-student run: its own `<run_dir>/best_<name>` (default: `best`).
    """

    def __init__(self, run_dir: str | Path, metric: str, mode: str = "max", name: str = "") -> None:
        self.dir = Path(run_dir) / (f"best_{name}" if name else "best")
        self.metric, self.mode = metric, mode
        self.best = self._recorded()
        self.seen = False

    def _recorded(self) -> float | None:
        """The value recorded by an earlier launch of this run (resume keeps the best so far)."""
        for d in (self.dir, self.dir.with_name(f".{self.dir.name}_old")):  # .best_old: a crash mid-swap
            try:
                meta = json.loads((d / META_FILE).read_text())
                return float(meta[self.metric])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return None

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def update(self, step: int, state: dict[str, Any], metrics: dict[str, Any]) -> bool:
        """Write `state` as the new best when `metrics[metric]` beats the best so far. Returns whether it did."""
        value = metrics.get(self.metric)
        if not isinstance(value, int | float):
            return False
        self.seen = True
        if not self.better(float(value)):
            return False
        tmp, old = self.dir.with_name(f".{self.dir.name}_tmp"), self.dir.with_name(f".{self.dir.name}_old")
        shutil.rmtree(tmp, ignore_errors=True)
        save_state(tmp, state, {"step": step, self.metric: float(value), "metric": self.metric, "mode": self.mode})
        shutil.rmtree(old, ignore_errors=True)
        if self.dir.exists():
            os.replace(self.dir, old)
        os.replace(tmp, self.dir)
        shutil.rmtree(old, ignore_errors=True)
        self.best = float(value)
        return True
