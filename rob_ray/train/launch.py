"""Launch a run: connect to (or start) Ray, scan the data once, then either run the loop
in-process (`scaling.num_workers=0`) or as a Ray Train `TorchTrainer` with the teacher
colocated in every worker. Relaunching the same `run.name` resumes from its last checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rob_ray.config import Config, ConfigError, config_to_dict, save_config
from rob_ray.data.sources import ImageTable, scan_images
from rob_ray.train.checkpoint import CheckpointError, checkpoint_dirs, load_state, verify_checkpoint

__all__ = ["QUIET_ENV", "FitResult", "fit", "init_ray", "latest_checkpoint_dir", "resource_plan"]

# Quiet, fast workers: no usage stats, no duplicated prints, no progress bars; malloc settings
# that removed ~300k page faults per step on CPU here (shared/README.md: 1.6x on a RoB step).
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "MALLOC_MMAP_THRESHOLD_": "34359738368",
    "MALLOC_TRIM_THRESHOLD_": "34359738368",
    "MALLOC_TOP_PAD_": "1073741824",
}


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, Any]
    checkpoint_dir: Path | None


def resource_plan(cfg: Config) -> dict[str, float]:
    """CPUs/GPUs the run asks Ray for: training workers plus their Ray Data actors."""
    workers = max(cfg.scaling.num_workers, 1)
    train_cpu = cfg.scaling.cpus_per_worker * cfg.scaling.num_workers
    data_cpu = workers * cfg.data.num_actors * cfg.data.cpus_per_actor
    gpus = cfg.scaling.gpus_per_worker * cfg.scaling.num_workers if cfg.scaling.use_gpu else 0.0
    return {"train_cpus": train_cpu, "data_cpus": data_cpu, "total_cpus": train_cpu + data_cpu, "gpus": gpus}


def init_ray(cfg: Config) -> None:
    """Join the cluster when one exists (`ray job submit`, `ray start`), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}}
    address = cfg.scaling.ray_address or os.environ.get("RAY_ADDRESS")
    if address is None:
        try:
            ray.init(address="auto", runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
            return
        except ConnectionError:
            pass
    if address is not None:
        ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
        return
    # Workers of a cluster we start import the same rob_ray as this driver (a clone that was
    # not pip-installed, or a second checkout, must not pick up another copy).
    package_root = str(Path(__file__).resolve().parents[2])
    runtime_env["env_vars"]["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    plan = resource_plan(cfg)
    num_cpus = cfg.scaling.ray_num_cpus or max(os.cpu_count() or 1, int(plan["total_cpus"] + 0.999))
    ray.init(num_cpus=num_cpus, num_gpus=None if cfg.scaling.use_gpu else 0, runtime_env=runtime_env,
             logging_level="WARNING", log_to_driver=True, dashboard_host="127.0.0.1",
             object_store_memory=min(2 << 30, _object_store_default()))


def _object_store_default() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.1)
    except (ValueError, OSError):
        return 1 << 30


def _check_cluster_fits(cfg: Config) -> None:
    import ray

    plan = resource_plan(cfg)
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
    autoscaling = os.environ.get("ROB_RAY_AUTOSCALING") == "1"
    if not autoscaling and (plan["total_cpus"] > cpus + 1e-6 or plan["gpus"] > gpus + 1e-6):
        raise ConfigError(
            f"resource error: the run needs {plan['total_cpus']:g} CPUs ({plan['train_cpus']:g} training + "
            f"{plan['data_cpus']:g} data) and {plan['gpus']:g} GPUs but the cluster has {cpus:g} CPUs and {gpus:g} GPUs; "
            "lower scaling.cpus_per_worker / data.num_actors / data.cpus_per_actor, or set ROB_RAY_AUTOSCALING=1"
        )


def latest_checkpoint_dir(run_dir: str | Path) -> Path | None:
    """Newest intact checkpoint of a run, from Ray Train (`checkpoint_step_*`) or local (`checkpoints/step_*`)."""
    for p in reversed(checkpoint_dirs(run_dir)):
        try:
            verify_checkpoint(p)
            return p
        except CheckpointError:
            continue
    return None


def _worker_entry(config: dict[str, Any]) -> None:
    from rob_ray.train.context import RayTrainContext
    from rob_ray.train.loop import train_loop

    cfg = Config.model_validate(config["config"])
    ctx = RayTrainContext(config["table_ref"][0], config["run_dir"], num_actors=cfg.data.num_actors,
                          cpus_per_actor=cfg.data.cpus_per_actor, prefetch_batches=cfg.data.prefetch_batches)
    train_loop(cfg, ctx, config["num_images"])


def fit(cfg: Config, table: ImageTable | None = None) -> FitResult:
    """Train `cfg` to completion (resuming when its run folder already has checkpoints)."""
    import ray

    storage = Path(cfg.run.storage_path).expanduser().resolve()
    run_dir = storage / cfg.run.name
    if table is None:
        table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                            cfg.data.parquet_label_column, cfg.data.max_images)
    save_config(cfg, run_dir / "config.yaml")
    init_ray(cfg)
    _check_cluster_fits(cfg)
    table_ref = ray.put(table)
    if cfg.scaling.num_workers == 0:
        from rob_ray.train.context import LocalContext
        from rob_ray.train.loop import train_loop

        ctx = LocalContext(table, run_dir, device="cuda" if cfg.scaling.use_gpu else "cpu",
                           num_to_keep=cfg.run.num_to_keep, use_ray_data=True, table_ref=table_ref,
                           num_actors=cfg.data.num_actors, cpus_per_actor=cfg.data.cpus_per_actor,
                           prefetch_batches=cfg.data.prefetch_batches)
        metrics = train_loop(cfg, ctx, len(table))
    else:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        resources = {"CPU": cfg.scaling.cpus_per_worker}
        if cfg.scaling.use_gpu:
            resources["GPU"] = cfg.scaling.gpus_per_worker
        trainer = TorchTrainer(
            _worker_entry,
            train_loop_config={"config": config_to_dict(cfg), "table_ref": [table_ref], "num_images": len(table),
                               "run_dir": str(run_dir)},
            scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name=cfg.run.name, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=cfg.run.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_to_keep)),
        )
        result = trainer.fit()
        metrics = dict(result.metrics or {})
    ckpt = latest_checkpoint_dir(run_dir)
    if ckpt is not None and not metrics:
        metrics = {k: v for k, v in load_state(ckpt).items() if k in ("step", "skipped_images")}
    if metrics.get("stop_reason"):
        from rob_ray.train.faults import TrainingStopped

        raise TrainingStopped(metrics["stop_reason"])
    return FitResult(run_dir=run_dir, metrics=metrics, checkpoint_dir=ckpt)
