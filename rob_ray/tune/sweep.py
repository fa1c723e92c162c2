"""Ray Tune over Ray Train V2: each trial is a Tune function that fits its own TorchTrainer and
forwards the trainer's reports to Tune (`TuneReportCallback`); ASHA stops weak trials.

A search space of student-side keys only (`rob_ray.tune.groups.teacher_shared`) takes the other path:
its sampled configurations train as multi-student runs that share one teacher pass per step, one group
run after another (`run_grouped_sweep`); the outputs are the same files, one trial row per configuration.

Resources are planned up front so that a sweep can never wait forever on a small cluster:
each trial needs its training workers plus their Ray Data actors plus a sliver for the trial
function; concurrency is capped to what the cluster holds, and a sweep that cannot fit even one
trial fails at once saying what it needs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from rob_ray.config import Config, ConfigError, config_to_dict
from rob_ray.data.sources import scan_images
from rob_ray.train.launch import fit, init_ray, resource_plan
from rob_ray.tune.outputs import best_trial, write_best_config, write_sweep_plot, write_trials_csv
from rob_ray.tune.space import check_space, resolve_trial_config, to_tune_space

__all__ = ["SweepResult", "one_line_reason", "plan_concurrency", "run_grouped_sweep", "run_sweep"]


class SweepResult(dict):
    pass


def plan_concurrency(cfg: Config, cluster_cpus: float, cluster_gpus: float) -> int:
    """How many trials fit at once. Raises ConfigError when not even one does."""
    plan = resource_plan(cfg)
    per_cpu = plan["total_cpus"] + cfg.tune.trial_driver_cpus
    fits = math.floor(cluster_cpus / per_cpu + 1e-9)
    if plan["gpus"]:
        fits = min(fits, math.floor(cluster_gpus / plan["gpus"] + 1e-9))
    if fits < 1:
        raise ConfigError(
            f"resource error: one trial needs {per_cpu:g} CPUs ({plan['train_cpus']:g} training + {plan['data_cpus']:g} "
            f"data + {cfg.tune.trial_driver_cpus:g} trial driver) and {plan['gpus']:g} GPUs; the cluster has "
            f"{cluster_cpus:g} CPUs and {cluster_gpus:g} GPUs"
        )
    if cfg.tune.max_concurrent_trials:
        fits = min(fits, cfg.tune.max_concurrent_trials)
    return fits


def _trial(values: dict[str, Any], *, base: dict[str, Any], table_ref: list, trials_dir: str) -> None:
    trial_id = tune.get_context().get_trial_id()
    cfg = resolve_trial_config(base, values)
    cfg.run.name = f"trial_{trial_id}"  # stable: a resumed sweep resumes each trial's own run
    cfg.run.storage_path = trials_dir
    fit(cfg, table=ray.get(table_ref[0]), callbacks=[TuneReportCallback()])


def _scheduler(cfg: Config):
    if cfg.tune.scheduler == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler

    max_t = float(cfg.optim.epochs)
    return ASHAScheduler(time_attr="epochs_done", max_t=max_t, grace_period=min(cfg.tune.grace_period, max_t),
                         reduction_factor=cfg.tune.reduction_factor)


def _search_alg(cfg: Config, concurrency: int):
    if cfg.tune.search_alg == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError("config error: tune.search_alg = 'optuna' needs the optuna package; pip install optuna") \
                from None
        from ray.tune.search import ConcurrencyLimiter

        return ConcurrencyLimiter(OptunaSearch(), max_concurrent=concurrency)
    return None


def run_sweep(cfg: Config) -> SweepResult:
    """Run (or resume) the sweep described by `cfg.tune`; write trials.csv, best_config.yaml, sweep.png."""
    if not cfg.tune.search_space:
        raise ConfigError("config error: tune.search_space is empty; add e.g. optim.lr: {loguniform: [1.0e-4, 3.0e-3]}")
    base = config_to_dict(cfg)
    parsed = check_space(base, cfg.tune.search_space)
    from rob_ray.tune.groups import teacher_shared

    shared, why = teacher_shared(cfg, list(parsed))
    print(f"[rob_ray] sweep path: {'shared teacher (multi-student runs)' if shared else 'one run per trial'}: {why}",
          flush=True)
    if shared:
        return run_grouped_sweep(cfg, parsed)
    table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                        cfg.data.parquet_label_column, cfg.data.max_images)
    init_ray(cfg)
    have = ray.cluster_resources()
    concurrency = plan_concurrency(cfg, have.get("CPU", 0.0), have.get("GPU", 0.0))
    sweep_dir = Path(cfg.run.storage_path).expanduser().resolve() / cfg.run.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base, table_ref=[ray.put(table)], trials_dir=str(sweep_dir / "trials")),
        {"CPU": cfg.tune.trial_driver_cpus},
    )
    tuner_path = sweep_dir / "tuner"
    if tune.Tuner.can_restore(str(tuner_path)):
        print(f"[rob_ray] resuming sweep {tuner_path}", flush=True)
        tuner = tune.Tuner.restore(str(tuner_path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_tune_space(parsed),
            tune_config=tune.TuneConfig(metric=cfg.tune.metric, mode=cfg.tune.mode, num_samples=cfg.tune.num_samples,
                                        max_concurrent_trials=concurrency, scheduler=_scheduler(cfg),
                                        search_alg=_search_alg(cfg, concurrency)),
            run_config=tune.RunConfig(name="tuner", storage_path=str(sweep_dir), verbose=1),
        )
    results = tuner.fit()
    return write_outputs(cfg, base, results, sweep_dir, num_images=len(table))


def run_grouped_sweep(cfg: Config, parsed: dict[str, Any]) -> SweepResult:
    """The shared-teacher path: sample the configurations, train them `tune.students_per_run` at a time as
    multi-student runs (`<sweep>/groups/group_<i>`, one after another, each with the whole cluster; stable
    names, so re-running the sweep resumes them), then write the per-trial outputs."""
    from rob_ray.tune.groups import group_config, sample_configs, trial_records

    base = config_to_dict(cfg)
    samples = [(f"c{i:03d}", v) for i, v in enumerate(sample_configs(parsed, cfg.tune.num_samples, cfg.seed))]
    table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                        cfg.data.parquet_label_column, cfg.data.max_images)
    sweep_dir = Path(cfg.run.storage_path).expanduser().resolve() / cfg.run.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    size = cfg.tune.students_per_run
    trials = []
    for g in range(0, len(samples), size):
        group = samples[g: g + size]
        gcfg = group_config(base, group, f"group_{g // size}", str(sweep_dir / "groups"))
        error = ""
        try:
            fit(gcfg, table=table)
        except Exception as exc:  # a failed group: its trials are ERROR rows (as a failed Tune trial)
            error = one_line_reason(exc)
            print(f"[rob_ray] warning: group run {gcfg.run.name} failed: {error}", flush=True)
        trials += trial_records(sweep_dir / "groups" / gcfg.run.name, group, _total_steps(gcfg, len(table)), error)
    return _write_trials(cfg, base, trials, sweep_dir, extra={"path": "shared_teacher", "groups": -(-len(samples) // size)})


def one_line_reason(err: BaseException) -> str:
    """The innermost cause of a trial's error as 'Type: first line' (Tune and Ray Train wrap it twice)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None) or err.__cause__
        if not isinstance(inner, BaseException):
            break
        err = inner
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith((" ", "Traceback"))]
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _trial_id(result: Any) -> str:
    path = getattr(result, "path", None) or ""
    return Path(path).name or "?"


def _total_steps(cfg: Config, num_images: int) -> int:
    from rob_ray.data.schedule import SampleSchedule

    s = SampleSchedule(num_images, max(cfg.scaling.max_workers, 1), cfg.optim.batch_size, cfg.optim.epochs, cfg.seed,
                       cfg.global_batch())
    return min(s.total_steps, cfg.optim.max_steps or s.total_steps)


def write_outputs(cfg: Config, base: dict[str, Any], results: Any, sweep_dir: Path, num_images: int) -> SweepResult:
    trials = []
    for r in results:
        history = r.metrics_dataframe.to_dict("records") if r.metrics_dataframe is not None else []
        params = {k: v for k, v in (r.config or {}).items() if k in cfg.tune.search_space}
        trials.append({"trial_id": (r.metrics or {}).get("trial_id") or _trial_id(r), "params": params,
                       "history": history, "status": "ERROR" if r.error else "TERMINATED",
                       "reason": one_line_reason(r.error) if r.error else "",
                       "total_steps": _total_steps(resolve_trial_config(base, params), num_images)})
    return _write_trials(cfg, base, trials, sweep_dir, extra={"path": "per_trial"})


def _write_trials(cfg: Config, base: dict[str, Any], trials: list[dict[str, Any]], sweep_dir: Path,
                  extra: dict[str, Any]) -> SweepResult:
    out = SweepResult(**extra, sweep_dir=str(sweep_dir), trials=len(trials),
                      failed=[{"trial_id": t["trial_id"], "reason": t["reason"]} for t in trials if t["status"] == "ERROR"])
    out["trials_csv"] = str(write_trials_csv(trials, cfg.tune.metric, cfg.tune.mode, sweep_dir / "trials.csv"))
    out["sweep_png"] = str(write_sweep_plot(trials, cfg.tune.metric, sweep_dir / "sweep.png"))
    best = best_trial(trials, cfg.tune.metric, cfg.tune.mode)
    if best is not None:
        out["best_config"] = str(write_best_config(base, best, sweep_dir / "best_config.yaml", f"{cfg.run.name}_best"))
        out["best_params"] = best["params"]
    (sweep_dir / "sweep.json").write_text(json.dumps(out, indent=1, default=str))
    return out
