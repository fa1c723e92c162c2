"""Sweeps that pay for the teacher once: sampled configurations trained as multi-student runs.

When every searched key is student-side (`student.*`, `method.*` but `method.name`, and the optimiser
keys a student may set for itself: `rob_ray.config.STUDENT_OPTIM_KEYS`), every trial of the sweep has
the same teacher, data, augmentation, seed and schedule, hence the same global views and the same
teacher output at every step. `teacher_shared` says so (and why not otherwise); the sweep then samples
the configurations itself (`sample_configs`), groups them (`tune.students_per_run` per group) and
trains each group as one multi-student run (`group_config`: one `students:` entry per configuration,
named `c<index>`). Early stopping happens inside the group run: `RungStopper` applies ASHA's rule at
ASHA's rungs and drops a student (no more compute for it) while the others go on. Each configuration
is still one trial in trials.csv / best_config.yaml / sweep.png with its own metric history
(`trial_records`, read from the group run's prefixed metrics).

Everything here is plain Python (no Ray): the Ray part is `rob_ray.tune.sweep`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from rob_ray.config import STUDENT_OPTIM_KEYS, Config, validate_config

__all__ = ["RungStopper", "group_config", "is_student_side", "sample_configs", "teacher_shared", "trial_records"]


def is_student_side(key: str) -> bool:
    """A dotted config key one student of a multi-student run may set for itself."""
    section, _, rest = key.partition(".")
    if section == "student":
        return bool(rest)
    if section == "method":
        return bool(rest) and rest != "name"
    if section == "optim":
        return rest in STUDENT_OPTIM_KEYS
    return False


def teacher_shared(cfg: Config, keys: list[str]) -> tuple[bool, str]:
    """(whether the sweep's trials can share one teacher pass, the reason): True when every key is
    student-side, the method has a pretrained teacher, the base lists no students of its own, the search
    is random / grid (not Optuna's sequential proposals) and `tune.share_teacher` is on."""
    from rob_ray.methods import needs_pretrained_teacher

    if not cfg.tune.share_teacher:
        return False, "tune.share_teacher is off"
    if cfg.students:
        return False, "the base config already lists students"
    if cfg.tune.search_alg != "random":
        return False, f"tune.search_alg = {cfg.tune.search_alg} proposes each trial from the finished ones"
    if not needs_pretrained_teacher(cfg.method):
        return False, f"method '{cfg.method.name}' trains its own EMA teacher per student"
    other = [k for k in keys if not is_student_side(k)]
    if other:
        return False, (f"'{other[0]}' is run-wide (teacher, data, augmentation, seed, batch size or schedule): each "
                       "trial needs its own teacher pass")
    return True, "every searched key is student-side: the trials see the same views and the same teacher output"


def sample_configs(parsed: dict[str, tuple[str, Any]], num_samples: int, seed: int) -> list[dict[str, Any]]:
    """The sweep's configurations ({dotted key: value}): every grid combination `num_samples` times,
    each with its other keys drawn (seeded) from their distributions, as Tune's random search does."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 1723])
    grid = [k for k, (kind, _) in parsed.items() if kind == "grid"]
    combos = list(itertools.product(*(parsed[k][1] for k in grid))) or [()]
    out = []
    for _ in range(num_samples):
        for combo in combos:
            values = dict(zip(grid, combo))
            for key, (kind, args) in parsed.items():
                if kind == "grid":
                    continue
                if kind == "choice":
                    values[key] = args[int(rng.integers(len(args)))]
                elif kind == "randint":
                    values[key] = int(rng.integers(args[0], args[1]))
                elif kind == "uniform":
                    values[key] = float(rng.uniform(*args))
                else:  # loguniform
                    values[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
            out.append({k: values[k] for k in parsed})
    return out


def _nested(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{'optim.lr': 1e-3, 'student.head.hidden_dim': 64} -> {'optim': {'lr': ...}, 'student': {'head': {...}}}."""
    out: dict[str, dict[str, Any]] = {"student": {}, "optim": {}, "method": {}}
    for key, value in values.items():
        section, *parts = key.split(".")
        node = out[section]
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def group_config(base: dict[str, Any], samples: list[tuple[str, dict[str, Any]]], run_name: str,
                 storage_path: str) -> Config:
    """One multi-student run training `samples` ([(name, {dotted: value})]) on the base config (a dict)."""
    data = copy.deepcopy(base)
    data["students"] = [{"name": name, **_nested(values)} for name, values in samples]
    tune = data.setdefault("tune", {})
    tune["stop_students_early"] = tune.get("scheduler", "asha") == "asha"
    data.setdefault("run", {}).update(name=run_name, storage_path=storage_path)
    return validate_config(data)


class RungStopper:
    """ASHA's stopping rule (Li et al. 2020; Ray Tune's `ASHAScheduler`) for the students of one run.

    Rungs at `grace * rf^k` epochs below `max_t`. When a student first reports `metric` at or past a rung,
    its value is recorded there; it stops when the value is worse than the (1 - 1/rf) quantile of all
    values recorded at that rung (the students of a group reach a rung at the same logging step, so each
    decision sees the whole group). Called by the loop: `stopper({name: metrics}) -> names to stop`.
    """

    def __init__(self, metric: str, mode: str, grace: float, reduction_factor: float, max_t: float) -> None:
        self.metric, self.mode, self.rf = metric, mode, reduction_factor
        self.rungs: list[float] = []
        r = grace
        while r < max_t - 1e-9:
            self.rungs.append(r)
            r *= reduction_factor
        self.recorded: dict[float, dict[str, float]] = {r: {} for r in self.rungs}

    @classmethod
    def from_config(cls, cfg: Config) -> RungStopper:
        t = cfg.tune
        return cls(t.metric, t.mode, min(t.grace_period, cfg.optim.epochs), t.reduction_factor, float(cfg.optim.epochs))

    def __call__(self, students: dict[str, dict[str, Any]]) -> set[str]:
        fresh: dict[float, list[str]] = {}
        for name, m in students.items():
            value = m.get(self.metric)
            if not isinstance(value, int | float) or not math.isfinite(float(value)):
                continue
            for rung in self.rungs:
                if m.get("epochs_done", 0.0) >= rung - 1e-9 and name not in self.recorded[rung]:
                    self.recorded[rung][name] = float(value)
                    fresh.setdefault(rung, []).append(name)
        stop = set()
        for rung, names in fresh.items():
            values = np.array(list(self.recorded[rung].values()))
            signed = values if self.mode == "max" else -values
            cutoff = np.percentile(signed, 100 * (1 - 1 / self.rf))
            for name in names:
                v = self.recorded[rung][name]
                if (v if self.mode == "max" else -v) < cutoff:
                    stop.add(name)
        return stop


def trial_records(run_dir: Path, samples: list[tuple[str, dict[str, Any]]], total_steps: int,
                  error: str = "") -> list[dict[str, Any]]:
    """One trial record per configuration of a group run (`rob_ray.tune.outputs.TrialRecord` fields), its
    history from the run's metrics.jsonl: the rows where that student reported, its keys unprefixed."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for name, values in samples:
        prefix = f"{name}/"
        history = []
        for r in rows:
            own = {k[len(prefix):]: v for k, v in r.items() if k.startswith(prefix)}
            if "loss" in own:
                history.append({k: r[k] for k in ("step", "epoch", "epochs_done") if k in r} | own)
        stopped = next((r[f"{name}/stopped"] for r in rows if f"{name}/stopped" in r), "")
        out.append({"trial_id": f"trial_{name}", "params": values, "history": history,
                    "status": "ERROR" if error else "TERMINATED", "reason": error or stopped,
                    "total_steps": total_steps})
    return out
