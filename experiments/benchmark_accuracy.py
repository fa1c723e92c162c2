"""The accuracy benchmark: RoB against every baseline a user would weigh, each for the same wall time.

On a labelled ImageFolder (default ../shared/data/imagenette2-224) it trains the same student once per
row of experiments/configs/benchmark_accuracy.yaml — RoB from the teacher's logits, the `feature`
objective with one view and with multi-crop, DINO from scratch, supervised KD with labels, RoB from
prototypes fitted on the teacher's embeddings (the headless-teacher path) — each for
`budget_minutes` of training: a short calibration run measures the row's img/s, and the row gets the
number of epochs that fills the budget (so its schedules run to their end). Rows with `seeds` run once
per seed (mean ± half the spread). Then k-NN (k=20), linear probe and 1-/5-shot for every row, the
untrained student and the teacher; one table, and the online k-NN of every row against training wall
time on one figure.

Resumable row by row: each finished (row, seed) is written to <out>/rows/ and skipped by the next
invocation (`--force` re-runs), so a benchmark longer than one sitting is run in parts (`--rows`).

    python experiments/benchmark_accuracy.py                        # every row, 30 min each (CPU: hours)
    python experiments/benchmark_accuracy.py --rows rob scratch     # some rows; the table shows what is done
    python experiments/benchmark_accuracy.py --smoke --out /tmp/acc # tiny end-to-end check of every row
    python experiments/benchmark_accuracy.py --minutes 5 train.scaling.use_gpu=true

Outputs in --out (default runs/benchmark_accuracy): one run folder per (row, seed), rows/*.json,
benchmark.json, benchmark.md (the table and the targets), curves.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rob_ray.config import Config, ConfigError, apply_overrides, validate_config  # noqa: E402

DEFAULT_CONFIG = REPO / "experiments" / "configs" / "benchmark_accuracy.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenette2-224"
METRICS = ("knn", "linear", "1-shot", "5-shot")


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--data", default=str(DEFAULT_DATA), help="labelled ImageFolder with train/ and val/")
    p.add_argument("--out", default=str(REPO / "runs" / "benchmark_accuracy"))
    p.add_argument("--rows", nargs="+", default=None, help="row names to run (default: all)")
    p.add_argument("--minutes", type=float, default=None, help="training wall time per row (default: the config's)")
    p.add_argument("--force", action="store_true", help="re-run rows that already have a result")
    p.add_argument("--smoke", action="store_true", help="tiny run of every row: checks the pipeline, measures nothing")
    p.add_argument("overrides", nargs="*", help="train.KEY=VALUE (every row) or evaluation.KEY=VALUE")
    return p.parse_args(argv)


@dataclass
class RowRun:
    """One (row, seed) to train: its name in the files, its label in the table, its resolved config."""

    row: str
    seed: int
    label: str
    cfg: Config

    @property
    def key(self) -> str:
        return f"{self.row}_s{self.seed}"


def load_spec(path: Path, smoke: bool, overrides: list[str], minutes: float | None) -> dict[str, Any]:
    """The benchmark spec with --smoke settings and command-line overrides applied."""
    spec = yaml.safe_load(Path(path).read_text())
    spec = apply_overrides(copy.deepcopy(spec), overrides)
    smoke_spec = spec.get("smoke", {}) if smoke else {}
    for key in ("budget_minutes", "calibration_steps", "online_knn_images"):
        spec[key] = smoke_spec.get(key, spec[key])
    spec["evaluation"] = {**spec["evaluation"], **smoke_spec.get("evaluation", {})}
    spec["train_overrides"] = list(smoke_spec.get("train", []))
    spec["smoke_seeds"] = smoke_spec.get("seeds")
    spec["smoke_mode"] = smoke
    if minutes is not None:
        spec["budget_minutes"] = minutes
    return spec


def row_runs(spec: dict[str, Any], data: Path, out: Path, only: list[str] | None = None) -> list[RowRun]:
    """Every (row, seed) of the spec as a validated config (epochs still the placeholder). A bad row is a
    one-line ConfigError naming it."""
    names = [r["name"] for r in spec["rows"]]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ConfigError(f"--rows {' '.join(unknown)}: no such row; the rows are {', '.join(names)}")
    train = copy.deepcopy(spec["train"])
    path = Path(train.get("data", {}).get("path", "train"))
    train.setdefault("data", {})["path"] = str(path if path.is_absolute() else data / path)
    train.setdefault("run", {})["storage_path"] = str(out)
    runs = []
    for row in spec["rows"]:
        if only and row["name"] not in only:
            continue
        for seed in spec.get("smoke_seeds") or row.get("seeds", [train.get("seed", 0)]):
            d = copy.deepcopy(train)
            d["method"], d["seed"] = dict(row["method"]), seed
            d["run"]["name"] = f"{row['name']}_s{seed}"
            try:
                extra = row.get("smoke_overrides", []) if spec.get("smoke_mode") else []
                cfg = validate_config(apply_overrides(d, [*spec["train_overrides"], *row.get("overrides", []), *extra]))
            except ConfigError as exc:
                raise ConfigError(f"row '{row['name']}': {str(exc).splitlines()[0]}") from None
            runs.append(RowRun(row["name"], seed, row.get("label", row["name"]), cfg))
    return runs


def epochs_for_budget(budget_s: float, img_per_s: float, num_images: int) -> int:
    """Whole epochs that fill `budget_s` of training at `img_per_s` (at least one)."""
    return max(1, round(budget_s * img_per_s / max(num_images, 1)))


def wall_curve(metrics_path: Path, global_batch: int) -> list[tuple[float, float]]:
    """(training seconds, online k-NN %) from a run's metrics.jsonl. Seconds are rebuilt from each logging
    window's own rate (steps x batch / img_per_s), so evaluation pauses do not count."""
    t, last_step, out = 0.0, 0, []
    for line in Path(metrics_path).read_text().splitlines():
        m = json.loads(line)
        if "img_per_s" in m and m.get("img_per_s"):
            t += (m["step"] - last_step) * global_batch / m["img_per_s"]
            last_step = m["step"]
        if m.get("online_knn_top1") is not None:
            out.append((round(t, 2), float(m["online_knn_top1"])))
    return out


def calibrated_rate(metrics_path: Path) -> float:
    """img/s over a calibration run's logging windows after the first (which waits for the data actors to
    start), weighted by time: images / seconds. The last window alone read 56.7 img/s for a row that
    then trained at 54.5 (rob_s0, 2026-11-29: 31.8 instead of 30 minutes)."""
    rows = [json.loads(x) for x in Path(metrics_path).read_text().splitlines()]
    windows, prev = [], 0
    for m in rows:
        if m.get("img_per_s"):
            windows.append((m["step"] - prev, float(m["img_per_s"])))
            prev = m["step"]
    if not windows:
        raise RuntimeError(f"{metrics_path} has no img_per_s: the calibration run logged nothing")
    timed = windows[1:] or windows
    return sum(n for n, _ in timed) / sum(n / r for n, r in timed)


def calibrate(run: RowRun, table: Any, steps: int) -> float:
    """img/s of the row's own step: a `steps`-step run in a throwaway folder, its windows after the first."""
    from rob_ray.train.launch import fit

    cfg = run.cfg.model_copy(deep=True)
    cfg.optim.max_steps = steps
    cfg.run.name = f"{run.key}_calibration"
    cfg.run.log_every_steps = max(1, steps // 3)
    cfg.eval.online_knn_every_epochs = 0
    result = fit(cfg, table=table)
    return calibrated_rate(result.run_dir / "metrics.jsonl")


def evaluate_spec(spec_obj: Any, tables: tuple, ev: dict[str, Any]) -> dict[str, Any]:
    import torch

    from rob_ray.eval.runner import evaluate_features, split_features

    device = "cuda" if torch.cuda.is_available() else "cpu"
    fb, lb, fq, lq = split_features(spec_obj, tables, ev["size"], ev["engine"], 128, 1, device)
    return evaluate_features(fb, lb, fq, lq, ks=ev["knn_k"],
                             linear_kwargs={"epochs": ev["linear_epochs"], "lrs": ev["linear_lrs"],
                                            "weight_decays": ev["linear_weight_decays"]},
                             lowshot_kwargs={"shots": ev["shots"], "fractions": ev["fractions"],
                                             "num_draws": ev["draws"]})


def headline(evaluation: dict[str, Any], k: int = 20) -> dict[str, float]:
    """The table's numbers from one evaluation: k-NN at k, linear (test), 1-/5-shot means."""
    out = {"knn": evaluation["knn"].get(str(k), next(iter(evaluation["knn"].values())))}
    out["linear"] = evaluation["linear"]["test_top1"]
    for name in ("1-shot", "5-shot"):
        if name in evaluation.get("lowshot", {}):
            out[name] = evaluation["lowshot"][name]["mean"]
    return out


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per benchmark row: mean and half-spread over its seeds of every headline number."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        rows.setdefault(r["row"], []).append(r)
    out = []
    for name, runs in rows.items():
        agg: dict[str, Any] = {"row": name, "label": runs[0]["label"], "seeds": [r.get("seed") for r in runs]}
        for m in METRICS:
            vals = [r["headline"][m] for r in runs if m in r["headline"]]
            if vals:
                agg[m] = (sum(vals) / len(vals), (max(vals) - min(vals)) / 2)
        for m in ("images_seen", "img_per_s", "train_s", "epochs"):
            vals = [r[m] for r in runs if r.get(m) is not None]
            agg[m] = sum(vals) / len(vals) if vals else None
        out.append(agg)
    return out


def targets(table: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on the table (a line each; rows not run yet are named)."""
    by = {r["row"]: r for r in table}

    def get(row: str, m: str) -> float | None:
        return by[row][m][0] if row in by and m in by[row] else None

    lines = []
    rob_k, teach_k = get("rob", "knn"), get("teacher", "knn")
    if rob_k is not None and teach_k:
        lines.append(f"RoB k-NN / teacher k-NN = {rob_k / teach_k:.1%} (target >= 90%)")
    rob_l, teach_l = get("rob", "linear"), get("teacher", "linear")
    if rob_l is not None and teach_l:
        lines.append(f"RoB linear / teacher linear = {rob_l / teach_l:.1%} (target >= 85%)")
    scratch_k = get("scratch", "knn")
    if rob_k is not None and scratch_k is not None:
        lines.append(f"RoB k-NN - DINO from scratch = {rob_k - scratch_k:+.1f} points (target >= +25)")
    for f in ("feature_1view", "feature_multicrop"):
        fk = get(f, "knn")
        if rob_k is not None and fk is not None:
            lines.append(f"RoB k-NN - {f} = {rob_k - fk:+.1f} points (target > 0)")
    # The headless path is a RoB student too: the same comparisons, reported without a target of its own.
    fit_k, fit_l = get("fitted", "knn"), get("fitted", "linear")
    if fit_k is not None and teach_k:
        lines.append(f"fitted prototypes k-NN / teacher k-NN = {fit_k / teach_k:.1%} (no target: the headless path)")
    if fit_l is not None and teach_l:
        lines.append(f"fitted prototypes linear / teacher linear = {fit_l / teach_l:.1%}")
    for f in ("feature_1view", "feature_multicrop"):
        fk = get(f, "knn")
        if fit_k is not None and fk is not None:
            lines.append(f"fitted prototypes k-NN - {f} = {fit_k - fk:+.1f} points")
    kd_k = get("kd", "knn")
    if rob_k is not None and kd_k is not None:
        lines.append(f"RoB k-NN - supervised KD = {rob_k - kd_k:+.1f} points (the paper's reference point, no target)")
    missing = [r for r in ("rob", "scratch", "feature_1view", "feature_multicrop", "kd", "fitted",
                                 "teacher") if r not in by]
    if missing:
        lines.append(f"not run yet: {', '.join(missing)}")
    return lines


def markdown(table: list[dict[str, Any]], spec: dict[str, Any], data: Path) -> str:
    ev = spec["evaluation"]

    def cell(r: dict[str, Any], m: str) -> str:
        if m not in r:
            return ""
        mean, half = r[m]
        return f"{mean:.1f}" + (f" ± {half:.1f}" if len(r["seeds"]) > 1 else "")

    def num(v: float | None, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    lines = [f"Top-1 % on {data} (train -> val) at {ev['size']} px, {spec['budget_minutes']:g} min of training per "
             "row and seed; k-NN k=20 weighted cosine T=0.07, linear probe (test), low-shot logistic regression "
             "(mean over draws); ± is half the spread over seeds", "",
             "| model | seeds | epochs | images seen | img/s | training min | k-NN | linear | 1-shot | 5-shot |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        seeds = ",".join(str(s) for s in r["seeds"] if s is not None) or "-"
        train_min = None if r.get("train_s") is None else r["train_s"] / 60
        lines.append(f"| {r['label']} | {seeds} | {num(r.get('epochs'), '.0f')} | {num(r.get('images_seen'), ',.0f')} | "
                     f"{num(r.get('img_per_s'), '.1f')} | {num(train_min, '.1f')} | "
                     + " | ".join(cell(r, m) for m in METRICS) + " |")
    return "\n".join(lines + ["", *(f"- {t}" for t in targets(table))])


def plot_curves(results: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if r.get("curve"):
            xs, ys = zip(*r["curve"])
            ax.plot([x / 60 for x in xs], ys, marker="o", ms=3, label=f"{r['label']} (seed {r['seed']})")
    for r in results:
        if r["row"] in ("teacher", "untrained"):
            ax.axhline(r["headline"]["knn"], ls="--", lw=1, color="gray" if r["row"] == "untrained" else "black",
                       label=f"{r['label']} (final k-NN)")
    ax.set_xlabel("training wall time (min)")
    ax.set_ylabel("online k-NN top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def training_config(run: RowRun, spec: dict[str, Any], data: Path, rate: float, num_images: int) -> Config:
    """The row's config for its budget: whole epochs at the calibrated `rate`, online k-NN every epoch.

    Edited on a copy rather than re-validated from a dump, so that fields the row left unset stay unset
    (the fitted row's `method.teacher_temp`, which the prototype fit then derives)."""
    cfg = run.cfg.model_copy(deep=True)
    cfg.optim.epochs = epochs_for_budget(60.0 * float(spec["budget_minutes"]), rate, num_images)
    cfg.optim.warmup_epochs = min(cfg.optim.warmup_epochs, max(cfg.optim.epochs - 1, 0))
    cfg.eval.online_knn_every_epochs = 1
    cfg.eval.online_knn_path = str(data)
    cfg.eval.online_knn_max_images = int(spec["online_knn_images"])
    validate_config(cfg.model_dump(mode="json"))  # the cross-section checks, on the edited values
    return cfg


def run_row(run: RowRun, spec: dict[str, Any], data: Path, table: Any, tables: tuple,
            norm: tuple[tuple, tuple]) -> dict[str, Any]:
    """Calibrate, train for the budget, evaluate: one (row, seed)'s result."""
    from rob_ray.eval.embedders import EmbedSpec
    from rob_ray.train.launch import fit

    rate = calibrate(run, table, int(spec["calibration_steps"]))
    cfg = training_config(run, spec, data, rate, len(table))
    print(f"[bench] {run.key}: calibrated {rate:.1f} img/s -> {cfg.optim.epochs} epochs for "
          f"{spec['budget_minutes']:g} min", flush=True)
    t0 = time.perf_counter()
    result = fit(cfg, table=table)
    wall = time.perf_counter() - t0
    metrics = result.run_dir / "metrics.jsonl"
    curve = wall_curve(metrics, cfg.global_batch() or cfg.optim.batch_size * max(cfg.scaling.min_workers, 1))
    train_s = curve[-1][0] if curve else wall
    images = cfg.optim.epochs * len(table)
    spec_obj = EmbedSpec("student", run.label, cfg.model_dump(mode="json"), str(result.checkpoint_dir),
                         mean=norm[0], std=norm[1])
    evaluation = evaluate_spec(spec_obj, tables, spec["evaluation"])
    return {"row": run.row, "seed": run.seed, "label": run.label, "epochs": cfg.optim.epochs,
            "calibrated_img_per_s": rate, "images_seen": images, "train_s": train_s, "wall_s": round(wall, 1),
            "img_per_s": images / train_s if train_s else None, "curve": curve, "evaluation": evaluation,
            "headline": headline(evaluation), "checkpoint": str(result.checkpoint_dir)}


def reference_rows(cfg: Config, norm: tuple[tuple, tuple]) -> list[tuple[str, str, Any]]:
    """(name, label, EmbedSpec) of the untrained student and the teacher (the shared recipe's)."""
    from rob_ray.eval.embedders import EmbedSpec

    config = cfg.model_dump(mode="json")
    mean, std = norm
    return [("untrained", f"{cfg.student.arch} untrained",
             EmbedSpec("student", "untrained", config, None, mean=mean, std=std)),
            ("teacher", f"teacher {cfg.teacher.kind}", EmbedSpec("teacher", "teacher", config))]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from rob_ray.eval.runner import labelled_splits

    t0 = time.perf_counter()
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    try:
        spec = load_spec(Path(args.config), args.smoke, args.overrides, args.minutes)
        all_runs = row_runs(spec, data, out)
        runs = row_runs(spec, data, out, args.rows)
        tables = labelled_splits(data, spec["evaluation"].get("max_images"))
        from rob_ray.checks.preflight import preflight

        pre = preflight(all_runs[0].cfg)
    except (ConfigError, ValueError) as exc:
        print(f"benchmark error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    norm = (pre.teacher.mean, pre.teacher.std)
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    print(f"[bench] {len(runs)} training run(s) of {spec['budget_minutes']:g} min on {len(pre.table)} images "
          f"({', '.join(r.key for r in runs)}); results in {rows_dir}", flush=True)
    for run in runs:
        path = rows_dir / f"{run.key}.json"
        if path.is_file() and not args.force:
            print(f"[bench] {run.key}: done before ({path}); --force re-runs it", flush=True)
            continue
        result = run_row(run, spec, data, pre.table, tables, norm)
        path.write_text(json.dumps(result, indent=1))
        print(f"[bench] {run.key}: {json.dumps(result['headline'])}", flush=True)
    for name, label, spec_obj in reference_rows(all_runs[0].cfg, norm):
        path = rows_dir / f"{name}.json"
        if not path.is_file() or args.force:
            evaluation = evaluate_spec(spec_obj, tables, spec["evaluation"])
            path.write_text(json.dumps({"row": name, "seed": None, "label": label, "evaluation": evaluation,
                                        "headline": headline(evaluation)}, indent=1))
    order = [r["name"] for r in spec["rows"]] + ["untrained", "teacher"]
    results = [json.loads(p.read_text()) for p in sorted(rows_dir.glob("*.json"))]
    results.sort(key=lambda r: (order.index(r["row"]) if r["row"] in order else len(order), r.get("seed") or 0))
    table = aggregate(results)
    text = markdown(table, spec, data)
    (out / "benchmark.md").write_text(text + "\n")
    (out / "benchmark.json").write_text(json.dumps({"data": str(data), "budget_minutes": spec["budget_minutes"],
                                                    "smoke": args.smoke, "table": table, "results": results,
                                                    "targets": targets(table)}, indent=1, default=str))
    plot_curves(results, out / "curves.png")
    print(text)
    print(f"[bench] wall time {time.perf_counter() - t0:.0f}s; files: {out / 'benchmark.md'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
