"""Evidence for world-size-invariant, preemption-aware training (issue 18).

(a) The same run on 2 workers, on 1 worker, and on 2 workers that lose one at step k (the group
    restarts on 1 from the newest checkpoint, as an elastic shrink does): final student weights
    (max abs difference vs the 1-worker run) and the per-step loss curves.
(b) A simulated preemption notice after step k (`debug.preempt_at_step`): the checkpoint is saved at
    that step, the worker group fails and restarts, and the resumed run's final weights are compared
    with the uninterrupted 2-worker run of (a) (same world size: bitwise identical expected).

Backends: `--ray` runs every run through `rob_ray.train.launch.fit` (Ray Data + Ray Train TorchTrainer,
workers of 1 CPU thread each); the default runs the same training loop on gloo process groups in
spawned processes (no Ray: fast; what --smoke uses). The student is GroupNorm-only (`test_efficientnet_gn`
by default): BatchNorm statistics are per worker by design and would differ between splits.

    PYTHONPATH=$PWD python experiments/bench_elastic.py [--ray] [--steps 12] [--lose-at 5] [--out r.json]
    PYTHONPATH=$PWD python experiments/bench_elastic.py --smoke --out /tmp/elastic.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.train import LocalContext, load_state
from rob_ray.train.launch import latest_checkpoint_dir
from rob_ray.train.loop import train_loop
from rob_ray.train.preemption import SimulatedPreemption

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "demo_data" / "train"
WEIGHT_TOL = 1e-4  # float reduction order only (gradient all-reduce, split row sums), through AdamW


def make_data(root: Path, classes: int, per_class: int) -> Path:
    """A small labelled folder copied from the shipped demo images."""
    for cls in sorted(DEMO.iterdir())[:classes]:
        (root / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir())[:per_class]:
            shutil.copy(f, root / cls.name / f.name)
    return root


def overrides(data: Path, storage: Path, name: str, args: argparse.Namespace) -> list[str]:
    return [f"data.path={data}", f"run.storage_path={storage}", f"run.name={name}", f"seed={args.seed}",
            "augment.global_size=32", "augment.local_size=16", "augment.num_local=2",
            f"student.arch={args.student}", "student.head.hidden_dim=64", "student.head.bottleneck_dim=32",
            f"optim.global_batch_size={args.global_batch}", "optim.epochs=100", f"optim.max_steps={args.steps}",
            "optim.warmup_epochs=0", "run.log_every_steps=1", "run.checkpoint_every_steps=1000",
            "scaling.cpus_per_worker=1", "scaling.torch_threads=1"]


# ------------------------------------------------------------------ backends


def _gloo_worker(rank: int, world: int, store: str, ovr: list[str], data: str, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        table = scan_images(data)
        cfg = load_config(None, ovr)
        ctx = LocalContext(table, run_dir, num_to_keep=cfg.run.num_to_keep)
        ctx.rank, ctx.world_size = rank, world
        try:
            train_loop(cfg, ctx, len(table))
        except SimulatedPreemption as exc:  # the "node" goes: this launch ends, the next one resumes
            print(f"[bench] {exc}", flush=True)
    finally:
        dist.destroy_process_group()


def run_gloo(world: int, ovr: list[str], data: Path, run_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_gloo_worker, args=(world, f"{d}/store", ovr, str(data), str(run_dir)), nprocs=world,
                           join=True, start_method="spawn")  # fork is unsafe once torch ran in this process


def run_ray(world: int, ovr: list[str], data: Path, run_dir: Path) -> None:
    from rob_ray.train.launch import fit

    extra = [f"scaling.num_workers={world}", "run.max_failures=2", "scaling.ray_num_cpus=4",
             "data.num_actors=1", "data.cpus_per_actor=0.5", "scaling.cpus_per_worker=0.75"]
    fit(load_config(None, ovr + extra))


# ------------------------------------------------------------------ measurements


def final_student(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint_dir(run_dir)
    if ckpt is None:
        raise RuntimeError(f"no checkpoint in {run_dir}")
    state = load_state(ckpt)
    return {"step": state["step"], **state["student"]}


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a
               if isinstance(a[k], torch.Tensor) and a[k].is_floating_point())


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def checkpoint_steps(run_dir: Path) -> list[int]:
    from rob_ray.train.checkpoint import checkpoint_dirs, checkpoint_step

    return sorted(checkpoint_step(p)[0] for p in checkpoint_dirs(run_dir))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ray", action="store_true", help="run through Ray Train (default: gloo processes, no Ray)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--lose-at", type=int, default=5, help="step k: a worker is lost / a preemption notice arrives")
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--student", default="test_efficientnet_gn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="4 steps, k=2 (CI)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.lose_at = 4, 2
    os.environ.setdefault("RAY_ADDRESS", "local")
    run = run_ray if args.ray else run_gloo
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp / "images", 4, 12 if args.smoke else 24)
        runs = tmp / "runs"

        def ovr(name: str) -> list[str]:
            return overrides(data, runs, name, args)

        k = args.lose_at
        run(1, ovr("one"), data, runs / "one")
        run(2, ovr("two"), data, runs / "two")
        # 2 workers until step k (its checkpoint), then the group continues on 1 from that checkpoint.
        lost = ovr("lost")
        run(2, [*lost, f"optim.max_steps={k}", f"run.checkpoint_every_steps={k}"], data, runs / "lost")
        run(1, lost, data, runs / "lost")
        # A simulated preemption notice after step k on 2 workers, then the restart.
        pre = [*ovr("preempted"), f"debug.preempt_at_step={k}"]
        run(2, pre, data, runs / "preempted")
        ckpts_after_notice = checkpoint_steps(runs / "preempted")
        if not args.ray:  # gloo: the failed launch ended; relaunch (Ray Train restarts the group itself)
            run(2, pre, data, runs / "preempted")
        ref = final_student(runs / "one")
        result = {"backend": "ray" if args.ray else "gloo", "steps": args.steps, "k": k,
                  "global_batch": args.global_batch, "student": args.student, "weight_tol": WEIGHT_TOL, "rows": []}
        curves = {name: losses(runs / name) for name in ("one", "two", "lost", "preempted")}
        for name, label, against in (("two", "2 workers", "one"), ("lost", f"2 workers, 1 from step {k}", "one"),
                                     ("preempted", f"2 workers, preemption notice at step {k}", "two")):
            got = final_student(runs / name)
            ref_state = ref if against == "one" else final_student(runs / "two")
            d = max_diff(got, ref_state)
            dl = max(abs(curves[name][s] - curves[against][s]) for s in curves[against])
            result["rows"].append({"run": label, "vs": "1 worker" if against == "one" else "2 workers uninterrupted",
                                   "final_step": int(got["step"]), "max_abs_weight_diff": d,
                                   "max_abs_loss_diff": dl, "within_tol": d <= WEIGHT_TOL})
        result["preemption_checkpoints_after_notice"] = ckpts_after_notice
        result["loss_curves"] = curves
    print(f"| run ({result['backend']}, {args.steps} steps, global batch {args.global_batch}) | vs | final step | "
          f"max abs weight diff | max abs loss diff |")
    print("|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['run']} | {r['vs']} | {r['final_step']} | {r['max_abs_weight_diff']:.2e} | "
              f"{r['max_abs_loss_diff']:.2e} |")
    print(f"preemption notice after step {k}: checkpoints on disk when the group failed: "
          f"{result['preemption_checkpoints_after_notice']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
