"""The launch plan: how many CPUs the Ray Data actors get, how many the training workers get, and
how many torch threads a worker runs — sized to the work, with the reasons.

Rule (per training worker, on a node of C CPUs and G GPUs holding k workers, `share` = C / k):
- the data actors need `rate x cost` CPUs: `cost` is the CPU time per image of what they do
  (read + decode + shrink + draw with `augment.crops_on=worker`; + the batch's crops with
  `data_actors`), measured on a few images of the run's data when the caller can (`measure_decode_ms`);
  `rate` is what one worker is expected to consume: ~`CPU_IMG_PER_S_PER_CORE` per core of its
  share on CPU, `GPU_IMG_PER_S` on a GPU (an H100 on the anchor config; over-estimating it costs
  only idle actor CPUs on a GPU node);
- that is rounded up to 0.05 CPU, at least `MIN_ACTOR_CPUS` (a fraction of a core on a small node),
  at most what leaves the worker its share (a GPU worker keeps >= 1 CPU; on CPU-only nodes actors
  get at most half the share: there the step is the work); one actor per started CPU;
- the worker gets every remaining CPU and as many torch threads (rounded up: the actors' share idles between batches).
Explicit `data.num_actors` / `data.cpus_per_actor` / `scaling.cpus_per_worker` / `scaling.torch_threads`
win over the rule. With `eval.online_knn_mode=actor` the evaluation actor's CPUs are taken off the node
first and its CPUs / GPUs are added to the totals. Actors pinned to data nodes (`data.actor_resources`)
do not share the worker's node.

Pure functions (no Ray): unit-tested for a 2-core laptop and a 16-core, 1-GPU host.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from rob_ray.config import Config

__all__ = ["CPU_IMG_PER_S_PER_CORE", "DEFAULT_DECODE_MS", "GPU_IMG_PER_S", "MIN_ACTOR_CPUS", "NodeShape", "apply_plan",
           "eval_actor_resources", "local_node", "resource_plan", "teacher_line"]

CPU_IMG_PER_S_PER_CORE = 40.0  # the demo step (Lite0 -> ResNet-10-T, 2x64 + 4x32 px) measured ~81 img/s on 2 cores
GPU_IMG_PER_S = 3000.0  # the anchor config's end-to-end target on one H100/H200
MIN_ACTOR_CPUS = 0.1
# When no image could be measured: a 500x375 JPEG with DINO's crops measured 2.0 and 26.6 ms (one thread).
DEFAULT_DECODE_MS = {"worker": 2.0, "data_actors": 25.0}


@dataclass(frozen=True)
class NodeShape:
    """One node as the plan sees it: `cpus` Ray may schedule, `gpus`, and `cores` the processes can
    really run on (torch threads never exceed them; None = `cpus`)."""

    cpus: float
    gpus: float = 0.0
    source: str = "this machine"
    cores: float | None = None


def local_node() -> NodeShape:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        pass
    return NodeShape(float(cpus), float(gpus))


def _up(x: float, step: float = 0.05) -> float:
    return round(math.ceil(x / step - 1e-9) * step, 4)


def resource_plan(cfg: Config, node: NodeShape | None = None, decode_ms: float | None = None,
                  decode_source: str | None = None) -> dict[str, Any]:
    """CPUs/GPUs the run asks Ray for (training workers plus their Ray Data actors), the per-worker
    numbers behind them, and `why`: one line per decision. Custom resources (`data.actor_resources`,
    `scaling.worker_resources`) appear as `resource/<name>`; `nodes` when `scaling.workers_per_node` is set."""
    node = node or local_node()
    s, d, a = cfg.scaling, cfg.data, cfg.augment
    n_workers = s.min_workers  # an elastic range must fit its minimum to start; more workers join as nodes do
    workers = max(n_workers, 1)
    per_node = s.workers_per_node or (min(workers, max(int(node.gpus), 1)) if s.use_gpu else workers)
    eval_cpus, eval_gpus = eval_actor_resources(cfg)
    # The evaluation actor may land on the training workers' node: counted out of it (conservative).
    share = max(node.cpus - eval_cpus, MIN_ACTOR_CPUS) / per_node
    why = [f"node: {node.cpus:g} CPUs, {node.gpus:g} GPUs ({node.source}); {per_node} training worker(s) on it: "
           f"{share:g} CPUs each" + (" (after the evaluation actor's CPUs)" if eval_cpus else "")]
    if eval_cpus or eval_gpus:
        why.append(f"evaluation actor (eval.online_knn_mode=actor): {eval_cpus:g} CPU, {eval_gpus:g} GPU "
                   "(eval.actor_cpus / eval.actor_gpus), one per run, outside the training workers' placement group")
    remote_actors = bool(d.actor_resources)  # pinned to data nodes: the worker's node is all its own
    cost = decode_ms if decode_ms is not None else DEFAULT_DECODE_MS[a.crops_on]
    work = ("read + decode + shrink + draw" if a.crops_on == "worker"
            else "read + decode + shrink + draw + the batch's crops")
    why.append(f"augment.crops_on={a.crops_on} (auto: data_actors for CPU workers, worker for GPU workers): "
               f"data actors {work}: {cost:.2g} ms CPU per image "
               f"({decode_source or 'default estimate, not measured'})")
    rate = GPU_IMG_PER_S if s.use_gpu else CPU_IMG_PER_S_PER_CORE * share
    need = rate * cost / 1000.0
    cap = max(MIN_ACTOR_CPUS, share - 1.0) if s.use_gpu or remote_actors else max(MIN_ACTOR_CPUS, share / 2)
    data_cpus = min(max(_up(need), MIN_ACTOR_CPUS), cap)
    if d.num_actors is not None and d.cpus_per_actor is not None:
        actors, per_actor = d.num_actors, d.cpus_per_actor
        why.append(f"data actors: {actors} x {per_actor:g} CPU (data.num_actors / data.cpus_per_actor)")
    else:
        actors = d.num_actors or max(1, math.ceil(data_cpus - 1e-9))
        per_actor = d.cpus_per_actor or max(MIN_ACTOR_CPUS, _up(data_cpus / actors))
        kind = "GPU" if s.use_gpu else f"CPU: ~{CPU_IMG_PER_S_PER_CORE:g} img/s per core"
        why.append(f"expected <= {rate:g} img/s per worker ({kind}) -> {need:.2g} CPU of data work -> "
                   f"{actors} actor(s) x {per_actor:g} CPU (min {MIN_ACTOR_CPUS:g}, max {cap:g})")
    data_per_worker = actors * per_actor
    if s.cpus_per_worker is not None:
        worker_cpus = s.cpus_per_worker
        src = "scaling.cpus_per_worker"
    else:
        leave = 0.0 if remote_actors else data_per_worker
        worker_cpus = round(max(share - leave, MIN_ACTOR_CPUS), 4)
        if share - worker_cpus < leave:  # 2 - 1.55 < 0.45 in floats: Ray Data would call its actor starved
            worker_cpus = round(worker_cpus - 1e-4, 4)  # Ray's resource granularity
        src = "every CPU the actors leave"
    cores = (node.cores or node.cpus) / per_node
    # Rounded up: Ray's CPU counts are bookkeeping, and the actors' share is mostly idle between batches
    # (niced beside a CPU worker). 1.35 CPUs as 1 thread ran the demo at 41 img/s, as 2 threads at 55-65.
    threads = s.torch_threads or max(1, math.ceil(min(worker_cpus, cores) - 0.05))
    why.append(f"training worker: {worker_cpus:g} CPUs ({src}), {threads} torch threads"
               + (" (scaling.torch_threads)" if s.torch_threads else ""))
    why.append(teacher_line(cfg))
    train_cpu = worker_cpus * n_workers if n_workers else 0.0
    data_cpu = workers * data_per_worker
    gpus = (s.gpus_per_worker * n_workers if s.use_gpu else 0.0) + eval_gpus
    plan: dict[str, Any] = {
        "train_cpus": train_cpu, "data_cpus": data_cpu, "eval_cpus": eval_cpus, "eval_gpus": eval_gpus,
        "total_cpus": train_cpu + data_cpu + eval_cpus, "gpus": gpus,
        "cpus_per_worker": worker_cpus, "torch_threads": threads, "data_actors_per_worker": actors,
        "cpus_per_actor": per_actor, "decode_ms_per_image": round(cost, 3),
    }
    for name, res in d.actor_resources.items():
        plan[f"resource/{name}"] = plan.get(f"resource/{name}", 0.0) + workers * actors * res
    for name, res in s.worker_resources.items():
        plan[f"resource/{name}"] = plan.get(f"resource/{name}", 0.0) + n_workers * res
    if s.workers_per_node:
        plan["nodes"] = float(-(-workers // s.workers_per_node))
    plan["why"] = why
    return plan


def teacher_line(cfg: Config) -> str:
    """How the worker will run the teacher (`rob_ray.train.compiled`), for `--dry-run`."""
    from rob_ray.methods import needs_pretrained_teacher
    from rob_ray.train.compiled import teacher_mode

    mode = teacher_mode(cfg.run.compile_teacher, cfg.run.compile, is_cuda=cfg.scaling.use_gpu,
                        frozen_teacher=needs_pretrained_teacher(cfg.method))
    return {"eager": "teacher: eager (run.compile_teacher / run.compile off, or an EMA teacher on CPU)",
            "compiled": "teacher: torch.compile'd at its first step (run.compile)",
            "frozen": "teacher: compiled frozen for inference at set-up, ~5-10 s (a pretrained teacher on CPU; "
                      "run.compile_teacher=false: eager; eager with a note where torch cannot compile)"}[mode]


def eval_actor_resources(cfg: Config) -> tuple[float, float]:
    """(CPUs, GPUs) of the online evaluation actor: (0, 0) unless eval.online_knn_mode=actor with online k-NN on."""
    e = cfg.eval
    if e.online_knn_mode == "actor" and e.online_knn_every_epochs:
        return float(e.actor_cpus), float(e.actor_gpus)
    return 0.0, 0.0


def apply_plan(cfg: Config, plan: dict[str, Any]) -> Config:
    """A copy of `cfg` with the plan's numbers in place of the automatic (unset) ones."""
    out = cfg.model_copy(deep=True)
    if out.data.num_actors is None:
        out.data.num_actors = int(plan["data_actors_per_worker"])
    if out.data.cpus_per_actor is None:
        out.data.cpus_per_actor = float(plan["cpus_per_actor"])
    if out.scaling.cpus_per_worker is None:
        out.scaling.cpus_per_worker = float(plan["cpus_per_worker"])
    if out.scaling.torch_threads is None:
        out.scaling.torch_threads = int(plan["torch_threads"])
    return out
