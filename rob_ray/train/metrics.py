"""Training metrics: distribution diagnostics, stage timers, and the rank-0 writers
(JSONL, TensorBoard, one compact console line)."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

__all__ = ["MetricsWriter", "StageTimer", "distribution_stats", "format_progress"]


@torch.no_grad()
def distribution_stats(teacher_probs: torch.Tensor, student_log_probs: torch.Tensor, num_teacher_views: int
                       ) -> dict[str, torch.Tensor]:
    """Mean per-sample entropies (nats) and KL(teacher || student) on matching global views.

    teacher_probs: (G * B, K); student_log_probs: (V * B, K) with the G globals first.
    """
    t = teacher_probs.float()
    s_logp = student_log_probs.float()[: t.shape[0]]
    t_log = torch.log(t.clamp_min(1e-12))
    teacher_entropy = -(t * t_log).sum(-1).mean()
    student_entropy = -(s_logp.exp() * s_logp).sum(-1).mean()
    kl = (t * (t_log - s_logp)).sum(-1).mean()
    used = torch.unique(s_logp.argmax(-1)).numel()
    return {"teacher_entropy": teacher_entropy, "student_entropy": student_entropy, "kl_teacher_student": kl,
            "student_prototypes_used": torch.tensor(float(used))}


class StageTimer:
    """Accumulates wall time per named stage (`data/wait`, `teacher/forward`...) between resets.

    On GPU the caller synchronises before `stop` only at logging steps; elsewhere stages are
    host-side times (good enough for the data-wait fraction, which is what matters most).
    """

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._t0: dict[str, float] = {}

    def start(self, name: str) -> None:
        self._t0[name] = time.perf_counter()

    def stop(self, name: str) -> None:
        self.totals[name] += time.perf_counter() - self._t0.pop(name)

    def reset(self) -> dict[str, float]:
        out = dict(self.totals)
        self.totals = defaultdict(float)
        return out


def format_progress(m: dict[str, Any], total_steps: int) -> str:
    eta = m.get("eta_s", float("nan"))
    eta_txt = "?" if not math.isfinite(eta) else f"{int(eta // 60)}m{int(eta % 60):02d}s"
    return (f"[rob_ray] epoch {m['epoch']:>3} step {m['step']:>6}/{total_steps} loss {m['loss']:.4f} "
            f"lr {m['lr']:.2e} {m['img_per_s']:.0f} img/s data-wait {100 * m['data_wait_frac']:.0f}% "
            f"skipped {m['skipped_images']} ETA {eta_txt}")


class MetricsWriter:
    """Rank 0 only: appends metrics to `metrics.jsonl`, TensorBoard events, and prints progress."""

    def __init__(self, run_dir: str | Path, total_steps: int, console: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
        self.total_steps = total_steps
        self.console = console
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                # A unique suffix: a relaunch within the same second must not overwrite the last file.
                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), filename_suffix=f".{time.time_ns()}")
            except ImportError:
                self.tb = None

    def write(self, metrics: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps(metrics) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and k != "step":
                    self.tb.add_scalar(k, v, metrics["step"])
        if self.console and "loss" in metrics:
            print(format_progress(metrics, self.total_steps), file=sys.stdout, flush=True)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
