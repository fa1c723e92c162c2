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
# Commands with their own parsers are dispatched before argparse; all are listed in --help.
OWN_PARSER_COMMANDS = {"eval": "evaluate a run's frozen features: --checkpoint RUN --data DIR [--protocol knn,linear,lowshot]",
                       "export": "write a run's student for use outside rob_ray: --checkpoint RUN [--out DIR] [--onnx]",
                       "runtime-env": "print the runtime env JSON for `ray job submit --runtime-env-json`"}
COMMANDS = ("train", "demo", "tune", "teachers", "fit-prototypes", *OWN_PARSER_COMMANDS)  # key=value overrides alone run the demo
EXIT_TRAINING_STOPPED = 3
EXIT_SWEEP_FAILED = 1


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
        sp.add_argument("--verbose", action="store_true", help="Ray's own INFO logs on the console too (default: "
                        "in Ray's log files only)")
        sp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-3 scaling.num_workers=2")
    fp = sub.add_parser("fit-prototypes", help="fit (or find cached) prototypes for teacher.prototypes.fit; no training")
    fp.add_argument("--config", default=None, help="YAML config (default: experiments/configs/demo.yaml)")
    fp.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher.prototypes.fit.k=1024")
    tp = sub.add_parser("teachers", help="list the teacher catalogue (NAME: one entry, its URL and local file)")
    tp.add_argument("name", nargs="?", default=None)
    for name, text in OWN_PARSER_COMMANDS.items():  # listed here; their options: `run.py NAME --help`
        sub.add_parser(name, help=text, add_help=False)
    return p


def _unknown_command(word: str) -> str | None:
    """One line for a first word that is neither a command nor a key=value override (None if it is fine)."""
    import difflib

    if word in COMMANDS or word.startswith("-") or "=" in word:
        return None
    close = difflib.get_close_matches(word, COMMANDS, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"error: unknown command '{word}'{hint}; commands: {', '.join(COMMANDS)} (or key=value overrides for the demo)"


def _quiet_console(verbose: bool = False) -> None:
    """No colour codes when stdout is not a terminal (a log file, a pipe, CI); Ray Data's INFO lines
    (execution plans) go to its log file unless `--verbose` (the launcher passes the variable to workers)."""
    import os

    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if verbose:
        os.environ["ROB_RAY_VERBOSE"] = "1"  # Ray's own notices stay on the console (rob_ray.ray_log_filters)
        os.environ["RAY_DATA_LOGGING_CONFIG"] = str(Path(__file__).resolve().parent / "ray_data_logging_verbose.yaml")


def _resolve_paths(cfg: Config, base: Path) -> Config:
    """Relative data paths become absolute: from the working directory when they exist there, else from the
    repository root (the shipped configs' paths). Ray workers run in other directories, so a path that
    only works from here would fail there ("does not exist" on the worker)."""
    for section, key in (("data", "path"), ("data", "eval_path"), ("eval", "online_knn_path")):
        sec = getattr(cfg, section)
        value = getattr(sec, key)
        if not value or Path(value).is_absolute():
            continue
        if Path(value).exists():
            setattr(sec, key, str(Path(value).resolve()))
        elif (base / value).exists():
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
    if argv and (msg := _unknown_command(argv[0])):
        print(msg, file=sys.stderr)
        return EXIT_USER_ERROR
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["demo", *argv]
    args = _parser().parse_args(argv)
    _quiet_console(verbose=getattr(args, "verbose", False))
    try:
        if args.command == "teachers":
            from rob_ray.models.teachers.catalogue import describe_entry, format_catalogue

            print(describe_entry(args.name) if args.name else format_catalogue())
            return 0
        from rob_ray.checks.inputs import check_config_file

        check_config_file(args.config)  # a checkpoint or image passed as --config: named, not a traceback
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
        from rob_ray.checks.preflight import preflight

        pre = preflight(cfg)
        if args.dry_run:
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False).rstrip())
            print("# plan")
            print(yaml.safe_dump(pre.plan, sort_keys=False).rstrip())
            return 0
        from rob_ray.checks.inputs import check_gpu_available

        check_gpu_available(cfg)  # a launch, not a plan: GPUs must exist here or on a cluster to join
        return _train(cfg, pre, demo=args.command == "demo")
    except RobRayError as exc:  # every user error (rob_ray/errors.py); importing it needs no torch
        print(first_line(exc), file=sys.stderr)
        return EXIT_USER_ERROR
    except _training_stopped() as exc:  # checkpoint saved; the message says what to change
        print(f"[rob_ray] {exc}", file=sys.stderr)
        return EXIT_TRAINING_STOPPED


def _tune(cfg: Config, dry_run: bool) -> int:
    from rob_ray.tune.checks import check_sweep

    parsed = check_sweep(cfg)  # base config, data, every corner of the space, the metric: before Ray starts
    if dry_run:
        from rob_ray.tune.groups import teacher_shared

        shared, why = teacher_shared(cfg, list(parsed))
        print(yaml.safe_dump({"search_space": {k: {kind: list(a) if isinstance(a, tuple) else a}
                                               for k, (kind, a) in parsed.items()},
                              "metric": cfg.tune.metric, "mode": cfg.tune.mode,
                              "path": f"{'shared teacher (multi-student runs)' if shared else 'one run per trial'}: {why}"},
                             sort_keys=False).rstrip())
        return 0
    from rob_ray.checks.inputs import check_gpu_available

    check_gpu_available(cfg)
    from rob_ray.tune.sweep import run_sweep

    t0 = time.perf_counter()
    out = run_sweep(cfg)
    print((Path(out["trials_csv"])).read_text().rstrip())
    failed = out.get("failed") or []
    if failed and len(failed) == out.get("trials"):
        print(f"[rob_ray] sweep failed: all {len(failed)} trial(s) failed ({out['sweep_dir']})", file=sys.stderr)
        for row in failed:
            print(f"  trial {row['trial_id']}: {row['reason']}", file=sys.stderr)
        return EXIT_SWEEP_FAILED
    for row in failed:
        print(f"[rob_ray] warning: trial {row['trial_id']} failed: {row['reason']}", flush=True)
    print(f"[rob_ray] sweep done in {time.perf_counter() - t0:.0f}s: {out['sweep_dir']} "
          f"(best: {out.get('best_params')})")
    return 0


def run_summary(metrics: dict, plan: dict, wall_s: float, run_dir: str, checkpoint: Path | None, cfg: Config) -> str:
    """The end-of-run block: what was done, how fast, the final metrics, where it is, what to run next."""
    step = int(metrics.get("step", 0))
    images = step * int(plan.get("global_batch", 0))
    finals = [f"{k} {metrics[k]:.4g}" for k in ("loss", "online_knn_top1", "embedding_std", "teacher_entropy",
                                                 "student_entropy") if isinstance(metrics.get(k), int | float)]
    finals.append(f"skipped images {int(metrics.get('skipped_images', 0))}")
    ckpt = str(checkpoint) if checkpoint is not None else "(none)"
    data = cfg.data.eval_path or cfg.eval.online_knn_path or "DIR_WITH_train_AND_val"
    return "\n".join([
        f"[rob_ray] training done: {step}/{plan.get('total_steps', step)} steps, {images:,} images in {wall_s:.0f}s "
        f"({images / max(wall_s, 1e-9):.1f} img/s overall)",
        f"[rob_ray] final: {', '.join(finals)}",
        f"[rob_ray] run folder {run_dir} (metrics.jsonl, training_curves.png, train.log); checkpoint {ckpt}",
        "[rob_ray] next:",
        f"  python experiments/run.py eval --checkpoint {run_dir} --data {data} --protocol knn",
        f"  python experiments/run.py export --checkpoint {run_dir}",
    ])


def _write_train_log(cfg: Config, plan: dict) -> None:
    """`<run>/train.log` before training starts (a URI run: in the staging folder fit() uploads)."""
    from rob_ray.run_log import write_train_log
    from rob_ray.storage import is_uri

    if is_uri(cfg.run.storage_path):
        return  # the staging folder is fit()'s; the config.yaml there records the run
    plan = {k: v for k, v in plan.items() if isinstance(v, int | float | str | bool) or v is None}
    write_train_log(cfg.run_dir() / "train.log", config_to_dict(cfg), plan, REPO_ROOT)


def _after_training(cfg: Config, result) -> None:
    """Pictures of the run (rank-0 files only; a failure here never fails the run)."""
    try:
        from rob_ray.eval.plots import plot_training_curves, read_metrics

        out = plot_training_curves(read_metrics(result.run_dir), result.run_dir / "training_curves.png")
        if out is not None and result.storage is not None:
            result.storage.push()
    except Exception as exc:  # a plotting problem must not hide a finished run
        print(f"[rob_ray] warning: training_curves.png not written ({type(exc).__name__}: {exc})", flush=True)


def _train(cfg: Config, pre, demo: bool) -> int:
    from rob_ray.train.launch import fit

    t0 = time.perf_counter()
    plan = pre.plan
    print(f"[rob_ray] {plan['teacher']} ({plan['teacher_params_M']}M, {plan['teacher_prototypes']} prototypes) -> "
          f"{plan['student']} ({plan['student_params_M']}M) on {plan['images']} images, {plan['views']}, "
          f"{plan['total_steps']} steps x {plan['global_batch']} images", flush=True)
    _write_train_log(cfg, plan)
    result = fit(cfg, table=pre.table)
    train_s = time.perf_counter() - t0
    where = result.storage.uri if result.storage is not None else result.run_dir
    print(run_summary(result.metrics, plan, train_s, str(where), result.checkpoint_dir, cfg), flush=True)
    _after_training(cfg, result)
    if demo or cfg.data.eval_path:
        from rob_ray.eval.report import knn_report

        report = knn_report(cfg, result.checkpoint_dir, teacher=pre.teacher)
        report["train_seconds"] = round(train_s, 1)
        report["total_seconds"] = round(time.perf_counter() - t0, 1)
        result.write_text("knn.json", json.dumps(report, indent=1))
        result.write_text("knn.md", report["table"] + "\n")
        from rob_ray.eval.plots import plot_knn_table

        if plot_knn_table(report, result.run_dir / "knn.png") is not None and result.storage is not None:
            result.storage.push()
        print(report["table"])
        print(f"[rob_ray] wall time {report['total_seconds']:.0f}s (training {train_s:.0f}s)")
    if result.storage is not None:
        result.storage.close()  # a URI run's files are all in the storage now: drop the local staging copy
    return 0
