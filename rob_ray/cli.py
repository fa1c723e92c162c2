"""Command line: `python experiments/run.py [train|demo|tune] [--config X] [--dry-run] [key.sub=value ...]`,
`python experiments/run.py teachers [NAME]` (the teacher catalogue),
`python experiments/run.py fit-prototypes --config X [key=value ...]` (fit a headless teacher's prototypes, no training),
`python experiments/run.py eval --checkpoint RUN_OR_FILE --data DIR [--protocol knn,linear,lowshot]`,
`python experiments/run.py export --checkpoint RUN [--out DIR] [--onnx] [--projector]` (timm / ONNX files),
and `python experiments/run.py runtime-env` (the JSON for `ray job submit --runtime-env-json`).

With no arguments it runs the built-in demo. Every user error (config, data, teacher, student)
is printed as one line and exits with code 2 before any Ray work starts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from rob_ray.config import Config, config_to_dict, load_config
from rob_ray.errors import EXIT_USER_ERROR, RobRayError, first_line

__all__ = ["DEMO_CONFIG", "main"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "experiments" / "configs" / "demo.yaml"
COMMANDS = ("train", "demo", "tune", "teachers", "fit-prototypes")  # anything else on the command line runs the demo
EXIT_TRAINING_STOPPED = 3


def _training_stopped() -> type[BaseException]:
    from rob_ray.train.faults import TrainingStopped  # lazy: torch is not needed to print --help

    return TrainingStopped


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="experiments/run.py", description="RoB self-supervised distillation on Ray")
    sub = p.add_subparsers(dest="command")
    for name, text in (("train", "train a student (resumes when run.name already has checkpoints)"),
                       ("demo", "the built-in demo: train on the shipped images, then k-NN table"),
                       ("tune", "a Ray Tune sweep over the config's tune.search_space (re-run to resume)")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--config", default=None, help="YAML config (default: experiments/configs/demo.yaml)")
        sp.add_argument("--dry-run", action="store_true", help="validate and print the resolved config and plan")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 scaling.num_workers=2")
    fp = sub.add_parser("fit-prototypes", help="fit (or find cached) prototypes for teacher.prototypes.fit; no training")
    fp.add_argument("--config", default=None, help="YAML config (default: experiments/configs/demo.yaml)")
    fp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher.prototypes.fit.k=1024")
    tp = sub.add_parser("teachers", help="list the teacher catalogue (NAME: one entry, its URL and local file)")
    tp.add_argument("name", nargs="?", default=None)
    return p


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Relative data paths in the shipped configs are relative to the repository root."""
    for section, key in (("data", "path"), ("data", "eval_path"), ("eval", "online_knn_path")):
        sec = getattr(cfg, section)
        value = getattr(sec, key)
        if value and not Path(value).is_absolute() and not Path(value).exists() and (base / value).exists():
            setattr(sec, key, str(base / value))
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "runtime-env":  # JSON for `ray job submit --runtime-env-json`
        from rob_ray.runtime_env import main as runtime_env_main

        return runtime_env_main(argv[1:])
    if argv and argv[0] == "eval":  # its own options: --checkpoint RUN_OR_FILE --data DIR [--protocol ...]
        from rob_ray.eval.command import eval_main

        return eval_main(argv[1:])
    if argv and argv[0] == "export":  # --checkpoint RUN [--out DIR] [--onnx] [--projector]
        from rob_ray.export import export_main

        return export_main(argv[1:])
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["demo", *argv]
    args = _parser().parse_args(argv)
    try:
        if args.command == "teachers":
            from rob_ray.models.teachers.catalogue import describe_entry, format_catalogue

            print(describe_entry(args.name) if args.name else format_catalogue())
            return 0
        cfg = _resolve_paths(load_config(args.config or DEMO_CONFIG, args.overrides), REPO_ROOT)
        if args.command == "fit-prototypes":
            from rob_ray.prototypes.fit import fit_prototypes, format_report

            print(format_report(fit_prototypes(cfg)))
            return 0
        if cfg.teacher.prototypes is not None and cfg.teacher.prototypes.fit is not None:
            from rob_ray.prototypes.fit import ensure_prototypes

            # Fit (or reuse) before anything builds the teacher; a dry run only looks in the cache.
            cfg = ensure_prototypes(cfg, fit_missing=not args.dry_run)
        if args.command == "tune":
            return _tune(cfg, dry_run=args.dry_run)
        from rob_ray.preflight import preflight

        pre = preflight(cfg)
        if args.dry_run:
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
            print("# plan")
            print(yaml.safe_dump(pre.plan, sort_keys=False).rstrip())
            return 0
        return _train(cfg, pre, demo=args.command == "demo")
    except RobRayError as exc:  # every user error (rob_ray/errors.py); importing it needs no torch
        print(first_line(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    except _training_stopped() as exc:  # checkpoint saved; the message says what to change
        print(f"[rob_ray] {exc}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED


def _tune(cfg: Config, dry_run: bool) -> int:
    from rob_ray.config import config_to_dict
    from rob_ray.tune.space import check_space

    parsed = check_space(config_to_dict(cfg), cfg.tune.search_space)  # fails fast, before Ray starts
    if dry_run:
        print(yaml.safe_dump({"search_space": {k: {kind: list(a) if isinstance(a, tuple) else a}
                                               for k, (kind, a) in parsed.items()}}, sort_keys=False).rstrip())
        return 0
    from rob_ray.tune.sweep import run_sweep

    t0 = time.perf_counter()
    out = run_sweep(cfg)
    print((Path(out["trials_csv"])).read_text().rstrip())
    print(f"[rob_ray] sweep done in {time.perf_counter() - t0:.0f}s: {out['sweep_dir']} "
          f"(best: {out.get('best_params')})")
    return 0


def _train(cfg: Config, pre, demo: bool) -> int:
    from rob_ray.train.launch import fit

    t0 = time.perf_counter()
    plan = pre.plan
    print(f"[rob_ray] {plan['teacher']} ({plan['teacher_params_M']}M, {plan['teacher_prototypes']} prototypes) -> "
          f"{plan['student']} ({plan['student_params_M']}M) on {plan['images']} images, {plan['views']}, "
          f"{plan['total_steps']} steps x {plan['global_batch']} images", flush=True)
    result = fit(cfg, table=pre.table)
    train_s = time.perf_counter() - t0
    where = result.storage.uri if result.storage is not None else result.run_dir
    print(f"[rob_ray] training done in {train_s:.0f}s; run folder {where}", flush=True)
    if demo or cfg.data.eval_path:
        from rob_ray.eval.report import knn_report

        report = knn_report(cfg, result.checkpoint_dir, teacher=pre.teacher)
        report["train_seconds"] = round(train_s, 1)
        report["total_seconds"] = round(time.perf_counter() - t0, 1)
        result.write_text("knn.json", json.dumps(report, indent=1))
        result.write_text("knn.md", report["table"] + "\n")
        print(report["table"])
        print(f"[rob_ray] wall time {report['total_seconds']:.0f}s (training {train_s:.0f}s)")
    if result.storage is not None:
        result.storage.close()  # a URI run's files are all in the storage now: drop the local staging copy
    return 0
