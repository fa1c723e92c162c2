"""Three students in one run (one teacher pass per step) vs the same three trained one after another.

Both arms run the real training loop (`rob_ray.train.loop.train_loop`) in this process on the same
config and data (`LocalContext`: decode and crops in-process, no Ray, so nothing but the loop is
timed), for the same number of steps:
  (a) one multi-student run (`students:` with three entries);
  (b) each student's own single-student run (its resolved config), one after another.
Reported: wall time of each arm and their ratio; whether every student's final weights in (a) equal
its own run's in (b) (max |diff|; 0 = bitwise); and, from the single runs' own stage timers, the
share of a step that the teacher forward and the data (decode + crops) take, which (a) pays once
instead of three times: expected (a) = sum of (b) - 2 x mean(teacher + data seconds of a run).

    python experiments/bench_multi_student.py                 # the demo config, 3 students, 60 steps
    python experiments/bench_multi_student.py --smoke --out /tmp/m.json   # tiny settings, a CI test

--sweep: the same question for a sweep (issue 17's evidence b). A 4-configuration LR grid
(`tune.search_space={optim.lr: {grid: [...]}}`, FIFO, metric = loss) runs as the real Ray Tune sweep both
ways, in one local Ray (started before either is timed): the shared-teacher path (`tune.share_teacher=true`:
one multi-student run, `rob_ray.tune.sweep.run_grouped_sweep`) first, then the per-trial path
(`tune.share_teacher=false`: one Tune trial, one TorchTrainer, one teacher pass each). Every trial gets the
same resources (1 training worker, 1 CPU, 1 data actor; on 2 CPUs the per-trial path runs one trial at a
time). Reported: wall time of each sweep and their ratio; each trials.csv's ranking (configurations by
best loss; ties broken by the LR) and whether they match; the largest |best loss difference| of a
configuration between the two paths; and from the runs' metrics.jsonl the time inside the training steps
(step + data wait), the teacher's and the data's share of it, and the step time expected for the shared
path (the per-trial steps minus (n-1)/n of their teacher + data time) next to the measured one.

    RAY_ADDRESS=local python experiments/bench_multi_student.py --sweep     # demo config, 12 steps per trial
    RAY_ADDRESS=local python experiments/bench_multi_student.py --sweep --smoke --out /tmp/s.json   # CI (ray)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The demo's student (ResNet-10-T) and two student-side variants, as a sweep or an edge family would have.
STUDENTS = ("students=[{name: r10t}, {name: r10t_lr2x, optim: {lr: 0.01}}, "
            "{name: mnv3, student: {arch: mobilenetv3_small_100}}]")
SMOKE = ["student.arch=test_resnet", "student.head.hidden_dim=64", "student.head.bottleneck_dim=32",
         "augment.global_size=32", "augment.local_size=16", "augment.num_local=2", "optim.batch_size=8",
         "data.max_images=48", "teacher.kind=efficientnet_lite0"]
SMOKE_STUDENTS = ("students=[{name: a}, {name: b, optim: {lr: 0.01}}, "
                  "{name: c, student: {head: {hidden_dim: 48}}, method: {student_temp: 0.2}}]")
# --sweep: the demo config cut to 384 images x 2 epochs (12 steps of 64 images per trial), four LRs around
# the demo's 0.005. Each trial: 1 training worker with 1 CPU and one data actor with 0.5 CPU.
SWEEP_LRS = (0.001, 0.003, 0.01, 0.03)
SWEEP = ["data.max_images=384", "optim.epochs=2", "optim.warmup_epochs=0.5"]
SWEEP_SMOKE_LRS = (0.001, 0.03)
SWEEP_SMOKE = [*SMOKE, "optim.epochs=1", "optim.warmup_epochs=0", "optim.max_steps=3"]
SWEEP_FIXED = ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "scaling.torch_threads=1",
               "data.num_actors=1", "data.cpus_per_actor=0.5", "scaling.ray_num_cpus=2",
               "tune.num_samples=1", "tune.scheduler=fifo", "tune.metric=loss", "tune.mode=min",
               "run.log_every_steps=1", "eval.online_knn_every_epochs=0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "experiments" / "configs" / "demo.yaml"))
    ap.add_argument("--steps", type=int, default=60, help="training steps of every run")
    ap.add_argument("--smoke", action="store_true", help="tiny settings (CI)")
    ap.add_argument("--sweep", action="store_true", help="an LR sweep through Ray Tune: shared-teacher vs per-trial path")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.batch_size=32 (or students=[...])")
    args = ap.parse_args(argv)
    if args.sweep:
        lrs = SWEEP_SMOKE_LRS if args.smoke else SWEEP_LRS
        args.overrides = [*(SWEEP_SMOKE if args.smoke else SWEEP), *args.overrides,
                          f"tune.search_space={{optim.lr: {{grid: {list(lrs)}}}}}"]
    elif args.smoke:
        args.overrides = [*SMOKE, SMOKE_STUDENTS, *args.overrides]
        args.steps = min(args.steps, 3)
    elif not any(o.startswith("students=") for o in args.overrides):
        args.overrides = [STUDENTS, *args.overrides]
    return args


def _stage_seconds(run_dir: Path, key: str) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return sum(float(r.get(key, 0.0)) for r in rows)


def _timed_run(cfg, table, run_dir: Path) -> tuple[float, dict[str, Any]]:
    from rob_ray.train import LocalContext
    from rob_ray.train.loop import train_loop

    ctx = LocalContext(table, run_dir, num_to_keep=1)
    t0 = time.perf_counter()
    metrics = train_loop(cfg, ctx, len(table))
    return time.perf_counter() - t0, metrics


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.sweep:
        return sweep_main(args)
    import torch

    from rob_ray.config import load_config, student_configs
    from rob_ray.data import scan_images
    from rob_ray.train import load_state

    tmp = Path(tempfile.mkdtemp(prefix="bench_multi_student_"))
    fixed = [f"run.storage_path={tmp}", "scaling.num_workers=0", f"optim.max_steps={args.steps}",
             f"run.checkpoint_every_steps={args.steps}", "run.log_every_steps=1", "eval.online_knn_every_epochs=0"]
    if args.smoke:
        fixed.append(f"data.path={REPO / 'experiments' / 'demo_data' / 'train'}")
    cfg = load_config(args.config, [*args.overrides, *fixed, "run.name=multi"])
    table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column, cfg.data.parquet_label_column,
                        cfg.data.max_images)
    singles = student_configs(cfg)
    print(f"[bench] {len(singles)} students ({', '.join(f'{n}={c.student.arch}' for n, c in singles)}), teacher "
          f"{cfg.teacher.kind}, {args.steps} steps x {cfg.optim.batch_size} images, torch threads from the launch plan",
          flush=True)

    multi_s, multi_m = _timed_run(cfg, table, tmp / "multi")
    multi_state = load_state(sorted((tmp / "multi" / "checkpoints").iterdir())[-1])
    rows, seq_s, shared_s = [], 0.0, []
    for name, scfg in singles:
        scfg.run.name = f"single_{name}"
        wall, m = _timed_run(scfg, table, tmp / scfg.run.name)
        seq_s += wall
        run_dir = tmp / scfg.run.name
        teacher = _stage_seconds(run_dir, "time/teacher/forward")
        data = _stage_seconds(run_dir, "time/data/wait") + _stage_seconds(run_dir, "time/augment")
        shared_s.append(teacher + data)
        alone = load_state(sorted((run_dir / "checkpoints").iterdir())[-1])["student"]
        together = multi_state["students"][name]["student"]
        diff = max(float((alone[k].double() - together[k].double()).abs().max()) if alone[k].numel() else 0.0
                   for k in alone)
        rows.append({"student": name, "arch": scfg.student.arch, "single_run_s": round(wall, 2),
                     "teacher_s": round(teacher, 2), "data_s": round(data, 2),
                     "teacher_share": round(teacher / wall, 3), "final_loss_single": m["loss"],
                     "final_loss_multi": multi_m[f"{name}/loss"], "max_abs_weight_diff": diff})
    expected = seq_s - (len(singles) - 1) * sum(shared_s) / len(shared_s)
    result = {
        "config": args.config if not args.smoke else "smoke", "steps": args.steps, "batch": cfg.optim.batch_size,
        "threads": torch.get_num_threads(), "students": rows,
        "multi_run_s": round(multi_s, 2), "one_after_another_s": round(seq_s, 2),
        "speedup": round(seq_s / multi_s, 3), "expected_multi_run_s": round(expected, 2),
        "expected_speedup": round(seq_s / expected, 3),
        "multi_teacher_share": round(_stage_seconds(tmp / "multi", "time/teacher/forward") / multi_s, 3),
        "bitwise_equal": all(r["max_abs_weight_diff"] == 0.0 for r in rows),
    }
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)  # checkpoints of every run: hundreds of MB, measured already
    return result


def print_table(r: dict[str, Any]) -> None:
    print(f"\n{len(r['students'])} students, {r['steps']} steps x {r['batch']} images, {r['threads']} torch threads\n")
    print("| student | arch | own run (s) | teacher (s) | data (s) | teacher share | loss own run | loss in multi "
          "| max weight diff |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in r["students"]:
        print(f"| {s['student']} | {s['arch']} | {s['single_run_s']:.1f} | {s['teacher_s']:.1f} | {s['data_s']:.1f} | "
              f"{100 * s['teacher_share']:.0f} % | {s['final_loss_single']:.4f} | {s['final_loss_multi']:.4f} | "
              f"{s['max_abs_weight_diff']:.1e} |")
    print(f"\none after another: {r['one_after_another_s']:.1f} s; one multi-student run: {r['multi_run_s']:.1f} s "
          f"-> {r['speedup']:.2f}x (expected from the single runs' teacher + data time: {r['expected_multi_run_s']:.1f} s, "
          f"{r['expected_speedup']:.2f}x); teacher share of the multi run: {100 * r['multi_teacher_share']:.0f} %; "
          f"weights bitwise equal: {r['bitwise_equal']}")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _loop_times(run_dirs: list[Path]) -> dict[str, float]:
    """Seconds inside the training steps of these runs (`time/step` + `time/data/wait`, every step logged) and
    the teacher's and the data's part of them. A multi-student run logs each student's teacher time as
    `<name>/time/teacher/forward` (the first one computes it, the others look it up): all are summed."""
    out = {"loop_s": 0.0, "teacher_s": 0.0, "data_s": 0.0}
    for run_dir in run_dirs:
        for r in _rows(run_dir / "metrics.jsonl"):
            out["loop_s"] += float(r.get("time/step", 0.0)) + float(r.get("time/data/wait", 0.0))
            out["data_s"] += float(r.get("time/data/wait", 0.0)) + float(r.get("time/augment", 0.0))
            prefixed = [float(v) for k, v in r.items() if k.endswith("/time/teacher/forward")]
            out["teacher_s"] += sum(prefixed) if prefixed else float(r.get("time/teacher/forward", 0.0))
    return out


def _ranking(csv_path: Path, metric: str) -> list[dict[str, Any]]:
    """trials.csv's configurations best first: by best `metric` (lower is better), ties broken by the LR."""
    import csv

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    ranked = sorted(rows, key=lambda r: (float(r[f"best_{metric}"]), float(r["optim.lr"])))
    return [{"lr": float(r["optim.lr"]), f"best_{metric}": float(r[f"best_{metric}"]), "steps_run": int(r["steps_run"]),
             "status": r["status"]} for r in ranked]


def sweep_main(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from rob_ray.config import load_config
    from rob_ray.train.launch import init_ray
    from rob_ray.tune.sweep import run_sweep

    tmp = Path(tempfile.mkdtemp(prefix="bench_multi_student_sweep_"))
    fixed = [f"run.storage_path={tmp}", *SWEEP_FIXED]
    if args.smoke:
        fixed.append(f"data.path={REPO / 'experiments' / 'demo_data' / 'train'}")
    cfgs = {path: load_config(args.config, [*args.overrides, *fixed, f"run.name=sweep_{path}",
                                            f"tune.share_teacher={str(path == 'shared').lower()}"])
            for path in ("shared", "per_trial")}
    cfg = cfgs["shared"]
    lrs = cfg.tune.search_space["optim.lr"]["grid"]
    print(f"[bench] sweep of {len(lrs)} LRs {lrs}: student {cfg.student.arch}, teacher {cfg.teacher.kind}, "
          f"{cfg.optim.epochs} epochs x {cfg.data.max_images} images, batch {cfg.optim.batch_size}", flush=True)
    init_ray(cfg)  # one local Ray for both sweeps, started before either is timed
    walls, results = {}, {}
    try:
        for path in ("shared", "per_trial"):  # the shared path first: the per-trial one meets warm caches
            t0 = time.perf_counter()
            results[path] = run_sweep(cfgs[path])
            walls[path] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    sweep_dirs = {p: tmp / f"sweep_{p}" for p in walls}
    if results["shared"].get("path") != "shared_teacher" or results["per_trial"].get("path") != "per_trial":
        raise RuntimeError(f"the sweeps took the wrong paths: {results['shared'].get('path')}, "
                           f"{results['per_trial'].get('path')}")
    metric = cfg.tune.metric
    rank = {p: _ranking(sweep_dirs[p] / "trials.csv", metric) for p in walls}
    best = {p: {r["lr"]: r[f"best_{metric}"] for r in rank[p]} for p in walls}
    times = {"shared": _loop_times(sorted((sweep_dirs["shared"] / "groups").iterdir())),
             "per_trial": _loop_times(sorted((sweep_dirs["per_trial"] / "trials").iterdir()))}
    n = len(lrs)
    pt = times["per_trial"]
    expected_loop = pt["loop_s"] - (n - 1) / n * (pt["teacher_s"] + pt["data_s"])
    result = {
        "config": "smoke" if args.smoke else args.config, "lrs": lrs, "steps_per_trial": rank["shared"][0]["steps_run"],
        "batch": cfg.optim.batch_size, "metric": metric,
        "shared_wall_s": round(walls["shared"], 2), "per_trial_wall_s": round(walls["per_trial"], 2),
        "speedup": round(walls["per_trial"] / walls["shared"], 3),
        "ranking_shared": [r["lr"] for r in rank["shared"]], "ranking_per_trial": [r["lr"] for r in rank["per_trial"]],
        "same_ranking": [r["lr"] for r in rank["shared"]] == [r["lr"] for r in rank["per_trial"]],
        "trials": {p: rank[p] for p in walls},
        "max_abs_best_diff": max(abs(best["shared"][lr] - best["per_trial"].get(lr, float("nan"))) for lr in best["shared"]),
        "all_done": all(r["status"] == "TERMINATED" for p in walls for r in rank[p]),
        **{f"{p}_{k}": round(v, 2) for p in walls for k, v in times[p].items()},
        **{f"{p}_teacher_share": round(times[p]["teacher_s"] / max(times[p]["loop_s"], 1e-9), 3) for p in walls},
        **{f"{p}_data_share": round(times[p]["data_s"] / max(times[p]["loop_s"], 1e-9), 3) for p in walls},
        **{f"{p}_outside_steps_s": round(walls[p] - times[p]["loop_s"], 2) for p in walls},
        "expected_shared_loop_s": round(expected_loop, 2),
        "expected_loop_speedup": round(pt["loop_s"] / max(expected_loop, 1e-9), 3),
        "measured_loop_speedup": round(pt["loop_s"] / max(times["shared"]["loop_s"], 1e-9), 3),
    }
    print_sweep_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)  # every trial's checkpoints (~650 MB for the full sweep), measured already
    return result


def print_sweep_table(r: dict[str, Any]) -> None:
    print(f"\n{len(r['lrs'])}-configuration LR sweep {r['lrs']}, {r['steps_per_trial']} steps x {r['batch']} images per "
          f"trial, metric best {r['metric']}\n")
    print("| path | sweep wall (s) | in steps (s) | teacher (s) | teacher share | data (s) | data share "
          "| outside steps (s) | ranking (LR, best first) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for p, label in (("per_trial", "per trial (share_teacher=false)"), ("shared", "shared teacher (share_teacher=true)")):
        print(f"| {label} | {r[f'{p}_wall_s']:.1f} | {r[f'{p}_loop_s']:.1f} | {r[f'{p}_teacher_s']:.1f} | "
              f"{100 * r[f'{p}_teacher_share']:.0f} % | {r[f'{p}_data_s']:.1f} | {100 * r[f'{p}_data_share']:.0f} % | "
              f"{r[f'{p}_outside_steps_s']:.1f} | {', '.join(f'{lr:g}' for lr in r[f'ranking_{p}'])} |")
    print(f"\nper trial {r['per_trial_wall_s']:.1f} s, shared teacher {r['shared_wall_s']:.1f} s -> {r['speedup']:.2f}x; "
          f"time in steps {r['per_trial_loop_s']:.1f} -> {r['shared_loop_s']:.1f} s ({r['measured_loop_speedup']:.2f}x; "
          f"expected from the per-trial teacher + data time paid once: {r['expected_shared_loop_s']:.1f} s, "
          f"{r['expected_loop_speedup']:.2f}x); same ranking: {r['same_ranking']}; largest |best {r['metric']} "
          f"difference| of a configuration between the paths: {r['max_abs_best_diff']:.2e}")


if __name__ == "__main__":
    main()
