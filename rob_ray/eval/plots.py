"""PNG plots of a run and its evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["plot_accuracy_bars", "plot_knn_table", "plot_lowshot", "plot_online_knn", "plot_run", "plot_training_curves",
           "read_metrics"]

_CURVES = (("loss", "loss"), ("online_knn_top1", "online k-NN top-1 %"), ("kl_teacher_student", "KL(teacher || student)"),
           ("student_entropy", "entropy (nats)"), ("lr", "learning rate"), ("embedding_std", "embedding std"),
           ("img_per_s", "images / s"), ("data_wait_frac", "data-wait fraction"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of `<run>/metrics.jsonl` (a resumed run may repeat steps: the last row of a step wins)."""
    f = Path(run_dir) / "metrics.jsonl"
    if not f.is_file():
        return []
    by_step: dict[int, dict] = {}
    for line in f.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row.get("step", len(by_step)))] = row
    return [by_step[s] for s in sorted(by_step)]


def plot_training_curves(rows: list[dict[str, Any]], path: Path) -> Path | None:
    keys = [(k, label) for k, label in _CURVES if any(k in r for r in rows)]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, (k, label) in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in rows if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        if k == "student_entropy":
            t = [(r["step"], r["teacher_entropy"]) for r in rows if "teacher_entropy" in r]
            ax.plot([p[0] for p in t], [p[1] for p in t], lw=1.2, label="teacher")
            ax.lines[0].set_label("student")
            ax.legend(fontsize=7)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_online_knn(rows: list[dict[str, Any]], path: Path) -> Path | None:
    pts = [(r["online_knn_epoch"], r["online_knn_top1"]) for r in rows if "online_knn_top1" in r]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("online k-NN top-1 %")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _grouped_bars(groups: list[str], series: dict[str, list[tuple[float, float]]], ylabel: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(groups) * max(len(series), 1) / 2 + 2), 3.4))
    width = 0.8 / max(len(series), 1)
    for i, (name, vals) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v[0] for v in vals], width, yerr=[v[1] for v in vals], capsize=2, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_lowshot(results: dict[str, Any], path: Path) -> Path | None:
    models = {n: r["lowshot"] for n, r in results["models"].items() if "lowshot" in r}
    if not models:
        return None
    settings = list(next(iter(models.values())))
    series = {n: [(ls[s]["mean"], ls[s]["std"]) for s in settings] for n, ls in models.items()}
    return _grouped_bars(settings, series, "low-shot top-1 %", path)


def plot_accuracy_bars(results: dict[str, Any], path: Path, knn_k: str = "20", shot: str = "5-shot") -> Path | None:
    """k-NN (k=knn_k), linear (test) and `shot` low-shot per model, one group per protocol."""
    groups, getters = [], []
    first = next(iter(results["models"].values()), {})
    if knn_k in first.get("knn", {}):
        groups.append(f"k-NN k={knn_k}")
        getters.append(lambda r: (r["knn"][knn_k], 0.0))
    if "linear" in first:
        groups.append("linear")
        getters.append(lambda r: (r["linear"]["test_top1"], 0.0))
    if shot in first.get("lowshot", {}):
        groups.append(shot)
        getters.append(lambda r: (r["lowshot"][shot]["mean"], r["lowshot"][shot]["std"]))
    if not groups:
        return None
    series = {n: [g(r) for g in getters] for n, r in results["models"].items()}
    return _grouped_bars(groups, series, "top-1 %", path)


def plot_knn_table(report: dict[str, Any], path: Path) -> Path | None:
    """The demo's k-NN table (`rob_ray.eval.report.knn_report`) as a bar chart: one bar per model."""
    k = str(report.get("k", 20))
    results = {"models": {r["model"]: {"knn": {k: r["knn_top1"]}} for r in report.get("rows", [])}}
    return plot_accuracy_bars(results, path, knn_k=k) if results["models"] else None


def plot_run(run_dir: Path, results: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Every plot that has data: training curves, online k-NN vs epoch, low-shot bars, accuracy bars."""
    rows = read_metrics(run_dir)
    made = {
        "training_curves": plot_training_curves(rows, out_dir / "training_curves.png"),
        "online_knn": plot_online_knn(rows, out_dir / "online_knn.png"),
        "lowshot": plot_lowshot(results, out_dir / "lowshot.png"),
        "accuracy": plot_accuracy_bars(results, out_dir / "accuracy.png"),
    }
    return {k: v for k, v in made.items() if v is not None}
