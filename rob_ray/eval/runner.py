"""Evaluate frozen models on a labelled ImageFolder (`train/` -> `val/`): k-NN, linear probe and
low-shot, for a run's student (trained or untrained), its teacher or any timm model. The Python API
behind `experiments/run.py eval`; features come from Ray Data (`engine="ray"`) or a direct loop."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rob_ray.config import Config
from rob_ray.data.sources import DataSourceError, ImageTable, scan_images
from rob_ray.errors import EvalInputError
from rob_ray.eval.embedders import EmbedSpec, build_embedder, resolve_checkpoint
from rob_ray.eval.features import extract_features
from rob_ray.eval.knn import KNN_KS, knn_accuracies
from rob_ray.eval.linear import linear_probe
from rob_ray.eval.lowshot import lowshot_eval

__all__ = ["PROTOCOLS", "evaluate", "evaluate_features", "find_run_dir", "labelled_splits", "markdown_table",
           "model_specs", "split_features", "write_results"]

PROTOCOLS = ("knn", "linear", "lowshot")


def find_run_dir(checkpoint_dir: Path) -> Path:
    """The run folder that holds a checkpoint (the nearest parent with config.yaml / metrics.jsonl)."""
    for p in (checkpoint_dir, *checkpoint_dir.parents[:2]):
        if (p / "config.yaml").is_file() or (p / "metrics.jsonl").is_file():
            return p
    return checkpoint_dir


def labelled_splits(data: str | Path, max_images: int | None = None) -> tuple[ImageTable, ImageTable]:
    """(train, val) tables of a labelled ImageFolder root. Raises DataSourceError with one line."""
    root = Path(data)
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataSourceError(f"--data '{root}' must be a labelled ImageFolder with train/ and val/ sub-folders "
                              "(class folders inside each)")
    tables = scan_images(root / "train", max_images=max_images), scan_images(root / "val", max_images=max_images)
    for name, t in zip(("train", "val"), tables):
        if not t.classes or (t.labels < 0).any():
            raise DataSourceError(f"'{root / name}' has images outside class folders; every image needs a class folder")
    if tables[0].classes != tables[1].classes:
        raise DataSourceError(f"'{root}/train' and '{root}/val' have different class folders; they must match")
    return tables


def model_specs(cfg: Config, checkpoint_dir: Path | None, models: Sequence[str], teacher_norm: tuple[tuple, tuple],
                feature: str = "auto", student: str = "") -> list[EmbedSpec]:
    """Specs for `models` names: student | untrained | teacher | timm:ARCH. `student`: the name of one
    student of a multi-student run (`cfg` is then that student's resolved config)."""
    who = f"student {student} " if student else "student "
    config = cfg.model_dump(mode="json")
    mean, std = teacher_norm
    specs = []
    for m in models:
        if m == "student":
            if checkpoint_dir is None:
                raise EvalInputError("model 'student' needs a checkpoint")
            specs.append(EmbedSpec("student", f"{who}{cfg.student.arch} (trained)", config, str(checkpoint_dir),
                                   feature=feature, mean=mean, std=std, student=student))
        elif m == "untrained":
            specs.append(EmbedSpec("student", f"{who}{cfg.student.arch} (untrained)", config, None,
                                   feature=feature, mean=mean, std=std))
        elif m == "teacher":
            specs.append(EmbedSpec("teacher", f"teacher {cfg.teacher.kind}", config, feature=feature))
        elif m.startswith("timm:"):
            specs.append(EmbedSpec("timm", m, arch=m.split(":", 1)[1], feature=feature))
        else:
            raise EvalInputError(f"model '{m}' is unknown; use student, untrained, teacher or timm:ARCH")
    return specs


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily use `n` intra-op threads. The probes are thousands of tiny matmuls: on a busy
    2-core machine 2 threads ran them ~60x slower than 1 (thread hand-off, not arithmetic)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def evaluate_features(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                      protocols: Sequence[str] = PROTOCOLS, *, ks: Sequence[int] = KNN_KS, temperature: float = 0.07,
                      linear_kwargs: dict | None = None, lowshot_kwargs: dict | None = None,
                      probe_threads: int | None = 1) -> dict[str, Any]:
    """Run the protocols on features (N, D) / labels (N,). Keys: knn {k: %}, linear {...}, lowshot {...}.

    probe_threads: torch threads for the linear / low-shot fits (None: leave as is).
    """
    out: dict[str, Any] = {"dim": int(train_f.shape[1]), "train_images": len(train_y), "test_images": len(test_y)}
    if "knn" in protocols:
        out["knn"] = {str(k): v for k, v in knn_accuracies(train_f, train_y, test_f, test_y, ks, temperature).items()}
    with torch_threads(probe_threads):
        if "linear" in protocols:
            out["linear"] = linear_probe(train_f, train_y, test_f, test_y, **(linear_kwargs or {}))
        if "lowshot" in protocols:
            out["lowshot"] = lowshot_eval(train_f, train_y, test_f, test_y, **(lowshot_kwargs or {}))
    return out


def split_features(spec: EmbedSpec, tables: tuple[ImageTable, ImageTable], size: int, engine: str, batch_size: int,
              num_actors: int, device: str) -> tuple[torch.Tensor, ...]:
    """(train features, train labels, val features, val labels) of `spec` via Ray Data or one process."""
    if engine == "ray":
        from rob_ray.eval.ray_features import ray_extract_features

        return (*ray_extract_features(spec, tables[0], size, batch_size=batch_size, num_actors=num_actors),
                *ray_extract_features(spec, tables[1], size, batch_size=batch_size, num_actors=num_actors))
    emb = build_embedder(spec, device)
    return (*extract_features(emb, tables[0], size, emb.mean, emb.std, batch_size, device),
            *extract_features(emb, tables[1], size, emb.mean, emb.std, batch_size, device))


def evaluate(checkpoint: str | Path, data: str | Path, *, protocols: Sequence[str] = PROTOCOLS,
             models: Sequence[str] = ("student",), engine: str = "ray", size: int | None = None,
             feature: str = "auto", ks: Sequence[int] = KNN_KS, temperature: float = 0.07,
             linear_kwargs: dict | None = None, lowshot_kwargs: dict | None = None, max_images: int | None = None,
             batch_size: int = 128, num_actors: int = 1, out_dir: str | Path | None = None, plots: bool = True,
             verbose: bool = True, student: str | None = None) -> dict[str, Any]:
    """Evaluate `models` of the run/checkpoint `checkpoint` on `data` (train/ -> val/); write
    `eval.json`, `eval.md` and PNG plots into `out_dir` (default `<run>/eval`, `<run>/eval_<student>` for a
    named student of a multi-student run). `student`: which student of a multi-student run (default the
    first). Returns the results."""
    from rob_ray.methods.models import input_normalisation
    from rob_ray.train.checkpoint import load_state

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise EvalInputError(f"protocol '{unknown[0]}' is unknown; choose from {', '.join(PROTOCOLS)}")
    if engine not in ("ray", "local"):
        raise EvalInputError(f"engine '{engine}' is unknown; choose ray or local")
    t0 = time.perf_counter()
    ckpt = resolve_checkpoint(checkpoint)
    state = load_state(ckpt)
    cfg = Config.model_validate(state["config"])
    name = ""
    if cfg.students or student:
        from rob_ray.train.students import pick_student

        name, cfg, _ = pick_student(cfg, state, student)  # that student's own resolved config
    del state
    run_dir = find_run_dir(ckpt)
    tables = labelled_splits(data, max_images)
    size = size or cfg.augment.global_size
    # The teacher's normalisation is the student's input normalisation (an EMA teacher's: ImageNet's).
    specs = model_specs(cfg, ckpt, models, input_normalisation(cfg), feature, student=name)
    if engine == "ray":
        from rob_ray.train.launch import init_ray

        init_ray(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {
        "checkpoint": str(ckpt), "run_dir": str(run_dir), "data": str(Path(data).resolve()), "size": size,
        "protocols": list(protocols), "knn_temperature": temperature, "engine": engine, "feature": feature,
        "classes": tables[0].classes, "models": {}, **({"student": name} if name else {}),
    }
    for spec in specs:
        t1 = time.perf_counter()
        fb, lb, fq, lq = split_features(spec, tables, size, engine, batch_size, num_actors, device)
        t2 = time.perf_counter()
        row = evaluate_features(fb, lb, fq, lq, protocols, ks=ks, temperature=temperature,
                                linear_kwargs=linear_kwargs, lowshot_kwargs=lowshot_kwargs)
        row.update({"feature_seconds": round(t2 - t1, 1), "protocol_seconds": round(time.perf_counter() - t2, 1)})
        results["models"][spec.name] = row
        if verbose:
            print(f"[rob_ray] eval {spec.name}: features {t2 - t1:.0f}s, protocols {time.perf_counter() - t2:.0f}s",
                  flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["table"] = markdown_table(results)
    out = Path(out_dir) if out_dir else run_dir / (f"eval_{name}" if name else "eval")
    results["out_dir"] = str(out)
    write_results(results, out, plots=plots)
    return results


def _fmt(stat: dict) -> str:
    return f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def markdown_table(results: dict[str, Any]) -> str:
    """One row per model: k-NN per k, linear (best-on-val LR/WD, test), low-shot mean ± std."""
    rows = list(results["models"].items())
    if not rows:
        return ""
    first = rows[0][1]
    cols = [f"k-NN k={k}" for k in first.get("knn", {})]
    if "linear" in first:
        cols += ["linear (val)", "linear (test)"]
    cols += list(first.get("lowshot", {}))
    lines = [f"Top-1 % on {results['data']} (train -> val) at {results['size']} px; k-NN weighted cosine "
             f"T={results['knn_temperature']}; low-shot: logistic regression, mean ± std over draws",
             "", "| model | dim | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for name, r in rows:
        cells = [f"{v:.1f}" for v in r.get("knn", {}).values()]
        if "linear" in r:
            cells += [f"{r['linear']['val_top1']:.1f}", f"{r['linear']['test_top1']:.1f}"]
        cells += [_fmt(v) for v in r.get("lowshot", {}).values()]
        lines.append(f"| {name} | {r['dim']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: Path, plots: bool = True) -> dict[str, Path]:
    """eval.json, eval.md and (when matplotlib works) the PNG plots; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "eval.json", "md": out_dir / "eval.md"}
    written["json"].write_text(json.dumps(results, indent=1))
    written["md"].write_text(results["table"] + "\n")
    if plots:
        from rob_ray.eval.plots import plot_run

        written.update(plot_run(Path(results["run_dir"]), results, out_dir))
    return written
