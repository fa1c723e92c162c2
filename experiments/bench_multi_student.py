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
"""

from __future__ import annotations

import argparse
import json
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "experiments" / "configs" / "demo.yaml"))
    ap.add_argument("--steps", type=int, default=60, help="training steps of every run")
    ap.add_argument("--smoke", action="store_true", help="tiny settings (CI)")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.batch_size=32 (or students=[...])")
    args = ap.parse_args(argv)
    if args.smoke:
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


if __name__ == "__main__":
    main()
