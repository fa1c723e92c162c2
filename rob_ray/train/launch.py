"""Launch a run: connect to (or start) Ray, scan the data once, then either run the loop
in-process (`scaling.num_workers=0`) or as a Ray Train `TorchTrainer` with the teacher
colocated in every worker. Relaunching the same `run.name` resumes from its last checkpoint."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rob_ray.config import Config, ConfigError, config_to_dict, save_config
from rob_ray.data.sources import ImageTable, scan_images
from rob_ray.ray_log_filters import quiet_ray_console
from rob_ray.storage import RunStorage
from rob_ray.train.checkpoint import CheckpointError, checkpoint_dirs, load_state, verify_checkpoint
from rob_ray.train.plan import NodeShape, apply_plan, local_node, resource_plan
from rob_ray.train.resume import check_resumable

__all__ = ["QUIET_ENV", "STARVATION_DELAY_ENV", "WORKER_CPU_ENV", "FitResult", "busy_warning", "cluster_shortfalls",
           "data_share_env", "fit", "init_ray", "latest_checkpoint_dir", "plan_for", "resource_plan"]

# CPU settings of every worker process: glibc malloc settings that removed ~300k page faults per
# step here (shared/README.md: 1.6x on a RoB step), and OpenMP threads that sleep instead of spinning
# at the end of each parallel region: a worker's torch threads share their cores with the data actors
# and Ray's daemons, and a thread spinning while its partner waits for a core stalled a 2-thread step
# up to 7x on a busy 2-core machine (libgomp's default spins ~300k iterations first).
WORKER_CPU_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "34359738368",
    "MALLOC_TRIM_THRESHOLD_": "34359738368",
    "MALLOC_TOP_PAD_": "1073741824",
    "OMP_WAIT_POLICY": "PASSIVE",
}
# Quiet, fast workers: no usage stats, no duplicated prints, no progress bars; the CPU settings above.
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    **WORKER_CPU_ENV,
}


@dataclass
class FitResult:
    run_dir: Path  # a local copy when run.storage_path is a URI (see `storage.uri`)
    metrics: dict[str, Any]
    checkpoint_dir: Path | None
    storage: RunStorage | None = None

    def write_text(self, name: str, text: str) -> Path:
        """Write a file into the run folder (and mirror it to a URI storage path)."""
        path = self.run_dir / name
        path.write_text(text)
        if self.storage is not None:
            self.storage.push()
        return path


def cluster_shortfalls(cfg: Config, totals: dict[str, float], nodes: list[dict[str, float]]) -> list[str]:
    """What the cluster lacks for `cfg` (empty when it fits). `totals`: `ray.cluster_resources()`;
    `nodes`: each alive node's total resources. Pure function: no Ray needed."""
    plan, short = resource_plan(cfg), []
    for key, have_key in (("total_cpus", "CPU"), ("gpus", "GPU")):
        if plan[key] > totals.get(have_key, 0.0) + 1e-6:
            short.append(f"{plan[key]:g} {have_key} (cluster has {totals.get(have_key, 0.0):g})")
    for key, need in plan.items():
        name = key.removeprefix("resource/")
        if key.startswith("resource/") and need > totals.get(name, 0.0) + 1e-6:
            short.append(f"{need:g} '{name}' (cluster has {totals.get(name, 0.0):g}; nodes advertise it with "
                         f"resources: {{{name}: N}})")
    eval_cpus, eval_gpus = plan["eval_cpus"], plan["eval_gpus"]
    if (eval_cpus or eval_gpus) and nodes and not any(
            node.get("CPU", 0.0) + 1e-6 >= eval_cpus and node.get("GPU", 0.0) + 1e-6 >= eval_gpus for node in nodes):
        short.append(f"{eval_cpus:g} CPU + {eval_gpus:g} GPU on one node for the evaluation actor "
                     "(eval.online_knn_mode=actor; no node has them: lower eval.actor_cpus / eval.actor_gpus "
                     "or use eval.online_knn_mode=async)")
    if cfg.scaling.workers_per_node:
        k = cfg.scaling.workers_per_node
        per_node = {"CPU": k * plan["cpus_per_worker"], **{n: k * v for n, v in cfg.scaling.worker_resources.items()}}
        if cfg.scaling.use_gpu:
            per_node["GPU"] = k * cfg.scaling.gpus_per_worker
        fitting = sum(all(node.get(n, 0.0) + 1e-6 >= v for n, v in per_node.items()) for node in nodes)
        if fitting < plan["nodes"]:
            want = ", ".join(f"{n} {v:g}" for n, v in per_node.items())
            short.append(f"{plan['nodes']:g} nodes with {want} for scaling.workers_per_node={k} (cluster has {fitting})")
    return short


def init_ray(cfg: Config) -> None:
    """Join the cluster when one exists (`ray job submit`, `ray start`), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    if not os.environ.get("ROB_RAY_VERBOSE"):  # the CLI's --verbose
        quiet_ray_console()  # the token-auth notice; the worker-echo filter once Ray is up (in _announce)
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    # A `ray job submit` driver inherits the job's runtime_env; Ray refuses a ray.init env that
    # sets one of its variables again (even to the same value), so leave those out.
    job_vars = _job_env_var_names()
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in QUIET_ENV.items() if k not in job_vars}}
    address = cfg.scaling.ray_address or os.environ.get("RAY_ADDRESS")
    how = "started a local Ray"
    if address == "local":  # a new local Ray even beside a running cluster: sized like any local start below
        address, how = "local-only", "started a new local Ray (scaling.ray_address=local: any other Ray here is left alone)"
    if address is None and (stale := _stale_cluster_file()):
        # ray.init("auto") would wait minutes for a cluster that was killed without `ray stop`, and
        # Ray Train's own actors (the placement-group cleaner) resolve "auto" through the same file:
        # left in place, they time out on the dead address and print a traceback mid-run.
        _remove_stale_cluster_file(stale)
        address, how = "local-only", f"started a new local Ray (Ray's address file named {stale}, where no cluster answers)"
    if address is None:
        try:
            ray.init(address="auto", runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
            return _announce("joined the running cluster")
        except ConnectionError:
            pass
    if address is not None and address != "local-only":
        ray.init(address=address, runtime_env=runtime_env, logging_level="WARNING", log_to_driver=True)
        return _announce("joined the running cluster")
    # Workers of a cluster we start import the same rob_ray as this driver (a clone that was
    # not pip-installed, or a second checkout, must not pick up another copy).
    package_root = str(Path(__file__).resolve().parents[2])
    runtime_env["env_vars"]["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    # Ray Data's INFO lines (execution plans) to its log file only (the CLI's --verbose picks the *_verbose.yaml);
    # only on a cluster started here, where this path exists on every node.
    runtime_env["env_vars"]["RAY_DATA_LOGGING_CONFIG"] = os.environ.setdefault(
        "RAY_DATA_LOGGING_CONFIG", str(Path(package_root) / "rob_ray" / "ray_data_logging.yaml"))
    plan = resource_plan(cfg)
    num_cpus = cfg.scaling.ray_num_cpus or max(os.cpu_count() or 1, int(plan["total_cpus"] + 0.999))
    runtime_env["env_vars"].update(data_share_env(num_cpus, plan, os.environ))
    # Custom resources a cluster config asks for (data_cpu...) exist on this one node too.
    custom = {k.removeprefix("resource/"): v for k, v in plan.items() if k.startswith("resource/")}
    # Ray starts worker processes at niceness 15, below its own daemons: on a small node every wake-up
    # of the raylet or the dashboard then preempts a torch thread of the training step mid-region. A
    # cluster started for this run exists for it: its workers run at the normal priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # address="local": a new cluster even when a crashed one left its address file behind.
    ray.init(address="local", num_cpus=num_cpus, num_gpus=None if cfg.scaling.use_gpu else 0, runtime_env=runtime_env,
             resources=custom or None,
             logging_level="WARNING", log_to_driver=True, dashboard_host="127.0.0.1",
             object_store_memory=min(2 << 30, _object_store_default()))
    _announce(how)


# Ray Data 2.60 learns its CPUs from an autoscaling coordinator that hands out what Ray Train leaves on a
# node in whole CPUs: with less than one CPU left (the demo's 0.2 on 2 cores), it counts none for the data
# actors, although Ray Core placed them and they run, and after 60 s warns "Cluster resources are not enough
# to run any task from ActorPoolMapOperator[...]. The job may hang forever unless the cluster scales up."
STARVATION_DELAY_ENV = "RAY_DATA_STARVATION_WARNING_DELAY_S"


def data_share_env(num_cpus: float, plan: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Environment for the workers of a one-node cluster started here for `plan`: when the data actors'
    share is a fraction of one CPU, Ray Data's starvation warning (a false alarm then, see above) is
    put past any run's length. A value the user set is kept; a cluster joined, or a share of at least
    one CPU, changes nothing (there the warning can be real)."""
    left_by_train = num_cpus - plan["train_cpus"]
    if plan["data_cpus"] <= 0 or left_by_train >= 1.0:
        return {}
    return {STARVATION_DELAY_ENV: environ.get(STARVATION_DELAY_ENV, "1e9")}


def _stale_cluster_file() -> str | None:
    """The address in Ray's `ray_current_cluster` file when nothing listens there (None otherwise)."""
    import socket

    try:
        from ray._common.utils import get_ray_address_file

        text = Path(get_ray_address_file(None)).read_text().strip()
        host, port = text.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=2.0):
            return None
    except (ImportError, OSError, ValueError) as exc:
        return text if isinstance(exc, ConnectionRefusedError) else None


def _remove_stale_cluster_file(stale: str) -> None:
    """Delete Ray's address file if it still names `stale` (another process may have rewritten it)."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    with contextlib.suppress(OSError):
        if path.read_text().strip() == stale:
            path.unlink()


def _job_env_var_names() -> set[str]:
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for the entrypoint
    if not raw:
        return set()
    try:
        return set((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return set()


def _announce(how: str) -> None:
    """One line naming the cluster the driver uses (a job must never start a second one)."""
    import ray

    if not os.environ.get("ROB_RAY_VERBOSE"):
        quiet_ray_console()  # Ray's console handler exists now
    have = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    print(f"[rob_ray] Ray: {how} at {ray.get_runtime_context().gcs_address} ({nodes} node(s), "
          f"{have.get('CPU', 0):g} CPU, {have.get('GPU', 0):g} GPU)", flush=True)


def _object_store_default() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.1)
    except (ValueError, OSError):
        return 1 << 30


def busy_warning(cfg: Config, available: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """A warning when the cluster could hold the run but other work holds what it needs right now.

    The run then waits for those resources; two runs that each hold a training worker and wait
    for a data actor CPU on a small cluster wait on each other forever. Pure function.
    """
    short = cluster_shortfalls(cfg, available, nodes)
    if not short:
        return None
    return (f"[rob_ray] warning: other work on this cluster holds what the run needs now ({'; '.join(short)} "
            "free); it will wait for it - on a small cluster, two runs can wait on each other forever")


def _check_cluster_fits(cfg: Config) -> None:
    import ray

    if os.environ.get("ROB_RAY_AUTOSCALING") == "1":  # an autoscaler adds the nodes on demand
        return
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    short = cluster_shortfalls(cfg, ray.cluster_resources(), nodes)
    if not short and (warning := busy_warning(cfg, ray.available_resources(), nodes)):
        print(warning, flush=True)
    if short and cfg.scaling.use_gpu and plan_gpus_short(short):
        raise ConfigError(
            f"resource error: the run needs {'; '.join(short)}; add GPU nodes to the cluster (or join one that has "
            "them: RAY_ADDRESS / scaling.ray_address), lower scaling.num_workers / scaling.gpus_per_worker, or set "
            "scaling.use_gpu=false")
    if short:
        plan = resource_plan(cfg)
        raise ConfigError(
            f"resource error: the run needs {'; '.join(short)} ({plan['train_cpus']:g} training + {plan['data_cpus']:g} "
            f"data + {plan['eval_cpus']:g} evaluation-actor CPUs); lower scaling.cpus_per_worker / data.num_actors / "
            "data.cpus_per_actor / eval.actor_cpus / custom resources, or set ROB_RAY_AUTOSCALING=1 on an "
            "autoscaling cluster"
        )


def plan_gpus_short(short: list[str]) -> bool:
    """Is a GPU among what the cluster lacks (`cluster_shortfalls` lines)?"""
    return any(" GPU (cluster has" in line for line in short)


def plan_for(cfg: Config, table: ImageTable | None, node: NodeShape | None = None) -> tuple[Config, dict[str, Any]]:
    """The launch plan for `cfg` on `node` (default: this machine), with the data actors' per-image
    cost measured on a few images of `table`; and `cfg` with the plan's numbers filled in."""
    from rob_ray.data.mapper import measure_decode_ms
    from rob_ray.data.policy import build_policy

    decode_ms, source = None, None
    if table is not None and len(table):
        decode_ms = measure_decode_ms(table, build_policy(cfg.augment))
        source = f"measured on {min(8, len(table))} images of the data" if decode_ms is not None else None
    plan = resource_plan(cfg, node, decode_ms, source)
    return apply_plan(cfg, plan), plan


def _ray_node_shape(cfg: Config) -> NodeShape:
    """The node a training worker lands on: the largest GPU node for GPU runs, else the largest node
    (logical CPUs as Ray schedules them; on a Ray started here, this machine's cores bound the threads)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if cfg.scaling.use_gpu and any(n.get("GPU") for n in nodes):
        nodes = [n for n in nodes if n.get("GPU")]
    if not nodes:
        return local_node()
    best = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
    here = local_node()
    one_node = len(nodes) == 1
    return NodeShape(best.get("CPU", 1.0), best.get("GPU", 0.0), "this machine's Ray" if one_node else "largest Ray node",
                     cores=min(here.cpus, best.get("CPU", 1.0)) if one_node else None)


def latest_checkpoint_dir(run_dir: str | Path) -> Path | None:
    """Newest intact checkpoint of a run, from Ray Train (`checkpoint_step_*`) or local (`checkpoints/step_*`)."""
    for p in reversed(checkpoint_dirs(run_dir)):
        try:
            verify_checkpoint(p)
            return p
        except CheckpointError:
            continue
    return None


def _elastic_kwargs(cfg: Config) -> dict[str, Any]:
    """Ray Train's elastic group settings (a (min, max) num_workers; Ray 2.55+)."""
    return {"elastic_resize_monitor_interval_s": cfg.scaling.elastic_resize_interval_s} if cfg.scaling.elastic else {}


def _preemption_kwargs(cfg: Config) -> dict[str, Any]:
    """Preemptions get their own restart budget where this Ray's FailureConfig has one (2.60+)."""
    from dataclasses import fields

    from ray.train import FailureConfig

    if "max_preemption_failures" not in {f.name for f in fields(FailureConfig)}:
        return {}
    return {"max_preemption_failures": cfg.run.max_preemption_failures}


def _worker_entry(config: dict[str, Any]) -> None:
    from rob_ray.train.context import RayTrainContext
    from rob_ray.train.loop import train_loop

    cfg = Config.model_validate(config["config"])
    ctx = RayTrainContext(config["table_ref"][0], RunStorage(cfg.run.storage_path, cfg.run.name),
                          num_actors=cfg.data.num_actors, cpus_per_actor=cfg.data.cpus_per_actor,
                          prefetch_batches=cfg.data.prefetch_batches, actor_resources=cfg.data.actor_resources,
                          max_batches_ahead=cfg.data.max_batches_ahead, upload=cfg.run.checkpoint_upload)
    train_loop(cfg, ctx, config["num_images"])
    ctx.close()


def fit(cfg: Config, table: ImageTable | None = None, callbacks: list | None = None) -> FitResult:
    """Train `cfg` to completion (resuming when its run folder already has checkpoints).

    `callbacks`: Ray Train V2 `UserCallback`s (e.g. Tune's `TuneReportCallback` inside a sweep).
    """
    import ray

    storage = RunStorage(cfg.run.storage_path, cfg.run.name)
    run_dir = storage.local_dir
    if table is None:
        table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column,
                            cfg.data.parquet_label_column, cfg.data.max_images)
    if cfg.teacher.prototypes is not None and cfg.teacher.prototypes.fit is not None:
        from rob_ray.prototypes.fit import ensure_prototypes

        cfg = ensure_prototypes(cfg, table)  # fitted once, then a cache hit (Tune trials, relaunches)
    storage.pull()  # a resumed URI run: earlier metrics (and local-mode checkpoints) come back first
    check_resumable(cfg, run_dir)  # before the new config overwrites the one its checkpoints were made with
    save_config(cfg, run_dir / "config.yaml")
    storage.push()
    init_ray(cfg)
    # A sweep's trials keep the unmeasured plan its concurrency was computed with (tune/sweep.py).
    cfg, plan = plan_for(cfg, table, _ray_node_shape(cfg)) if not callbacks else plan_for(cfg, None)
    print(f"[rob_ray] plan: {plan['data_actors_per_worker']} data actor(s) x {plan['cpus_per_actor']:g} CPU and "
          f"{plan['cpus_per_worker']:g} CPUs / {plan['torch_threads']} torch threads per training worker"
          + (f"; evaluation actor {plan['eval_cpus']:g} CPU / {plan['eval_gpus']:g} GPU"
             if plan["eval_cpus"] or plan["eval_gpus"] else "") + " (--dry-run says why)", flush=True)
    _check_cluster_fits(cfg)
    table_ref = ray.put(table)
    if cfg.scaling.elastic:
        print(f"[rob_ray] elastic: {cfg.scaling.min_workers}-{cfg.scaling.max_workers} workers, global batch "
              f"{cfg.global_batch()} per step whatever their number; every resize resumes from the newest checkpoint",
              flush=True)
    if cfg.scaling.num_workers == 0:
        if callbacks:
            raise ConfigError("config error: scaling.num_workers = 0 runs without Ray Train; sweeps need >= 1 worker")
        from rob_ray.train.context import LocalContext
        from rob_ray.train.loop import train_loop

        ctx = LocalContext(table, storage, device="cuda" if cfg.scaling.use_gpu else "cpu",
                           num_to_keep=cfg.run.num_to_keep, use_ray_data=True, table_ref=table_ref,
                           num_actors=cfg.data.num_actors, cpus_per_actor=cfg.data.cpus_per_actor,
                           prefetch_batches=cfg.data.prefetch_batches, actor_resources=cfg.data.actor_resources,
                           max_batches_ahead=cfg.data.max_batches_ahead)
        metrics = train_loop(cfg, ctx, len(table))
    else:
        from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        resources = {**cfg.scaling.worker_resources, "CPU": cfg.scaling.cpus_per_worker}
        if cfg.scaling.use_gpu:
            resources["GPU"] = cfg.scaling.gpus_per_worker
        trainer = TorchTrainer(
            _worker_entry,
            # Workers rebuild the storage from the config: an absolute path (their cwd differs) or the URI.
            train_loop_config={"config": {**config_to_dict(cfg), "run": {**config_to_dict(cfg)["run"],
                                                                       "storage_path": storage.storage_path}},
                               "table_ref": [table_ref], "num_images": len(table)},
            scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                         resources_per_worker=resources,
                                         **_elastic_kwargs(cfg)),
            run_config=RunConfig(name=cfg.run.name, storage_path=storage.storage_path,
                                 failure_config=FailureConfig(max_failures=cfg.run.max_failures,
                                                              **_preemption_kwargs(cfg)),
                                 checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_to_keep),
                                 callbacks=callbacks,
                                 # Ray Train's INFO lines (resource requests, each checkpoint) would bury
                                 # the one-line progress; warnings and errors still show.
                                 logging_config=LoggingConfig(log_level="WARNING")),
        )
        result = trainer.fit()
        metrics = dict(result.metrics or {})
        storage.download_latest_checkpoint()
    storage.push()
    ckpt = latest_checkpoint_dir(run_dir)
    if ckpt is not None and not metrics:
        metrics = {k: v for k, v in load_state(ckpt).items() if k in ("step", "skipped_images")}
    if metrics.get("stop_reason"):
        from rob_ray.train.faults import TrainingStopped

        raise TrainingStopped(metrics["stop_reason"])
    return FitResult(run_dir=run_dir, metrics=metrics, checkpoint_dir=ckpt, storage=storage)
