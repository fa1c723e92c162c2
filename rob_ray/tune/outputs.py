"""What a finished sweep leaves in its folder: trials.csv, best_config.yaml, sweep.png (no Ray)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TrialRecord", "best_trial", "write_best_config", "write_sweep_plot", "write_trials_csv"]


class TrialRecord(dict):
    """One trial: `trial_id`, `params` {dotted: value}, `history` [metrics rows], `total_steps`, `status`."""

    @property
    def history(self) -> list[dict[str, Any]]:
        return self["history"]


def _metric_values(trial: dict[str, Any], metric: str) -> list[float]:
    return [float(r[metric]) for r in trial["history"] if isinstance(r.get(metric), int | float)
            and math.isfinite(float(r[metric]))]


def best_trial(trials: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The trial with the best *best-seen* value of `metric` (None when no trial reported it)."""
    scored = [(max(v) if mode == "max" else min(v), t) for t in trials if (v := _metric_values(t, metric))]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda s: s[0])[1]


def write_trials_csv(trials: list[dict[str, Any]], metric: str, mode: str, path: Path) -> Path:
    keys = sorted({k for t in trials for k in t["params"]})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial_id", *keys, f"final_{metric}", f"best_{metric}", "epochs_run", "steps_run",
                    "stopped_early", "status"])
        for t in trials:
            values = _metric_values(t, metric)
            best = (max(values) if mode == "max" else min(values)) if values else ""
            last = t["history"][-1] if t["history"] else {}
            steps = int(last.get("step", 0))
            stopped = t["status"] == "TERMINATED" and steps < t["total_steps"]
            w.writerow([t["trial_id"], *[t["params"].get(k, "") for k in keys], values[-1] if values else "", best,
                        round(float(last.get("epochs_done", 0.0)), 3), steps, stopped, t["status"]])
    return path


def write_best_config(base: dict[str, Any], best: dict[str, Any], path: Path, run_name: str) -> Path:
    """A complete config `run.py train` accepts: the base with the best trial's values, no tune section."""
    from rob_ray.config import save_config
    from rob_ray.tune.space import resolve_trial_config

    cfg = resolve_trial_config(base, best["params"])
    cfg.run.name = run_name
    save_config(cfg, path)
    return path


def write_sweep_plot(trials: list[dict[str, Any]], metric: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for t in trials for k in t["params"]})
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(5 * (1 + len(keys)), 4), squeeze=False)
    ax = axes[0][0]
    for t in trials:
        rows = [r for r in t["history"] if isinstance(r.get(metric), int | float)]
        ax.plot([r.get("epochs_done", i) for i, r in enumerate(rows)], [r[metric] for r in rows], marker=".",
                label=t["trial_id"])
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial")
    if len(trials) <= 12:
        ax.legend(fontsize=7)
    for ax, key in zip(axes[0][1:], keys):
        xs, ys = [], []
        for t in trials:
            values = _metric_values(t, metric)
            if values and isinstance(t["params"].get(key), int | float):
                xs.append(t["params"][key])
                ys.append(values[-1])
        ax.scatter(xs, ys)
        ax.set_xlabel(key)
        ax.set_ylabel(f"final {metric}")
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def dump_yaml(data: Any, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
