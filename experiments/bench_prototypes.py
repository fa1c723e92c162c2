"""Headless teachers: do fitted prototypes make RoB work from a backbone alone?

Ray-free on purpose (in-process loop, local embedding engine): on a shared 2-core machine the rows
are then timed alike. The EfficientNet-Lite0 teacher used as a *headless* backbone (its 1280-d pooled embedding, the
ImageNet classifier ignored) distils the same ResNet-10-T student with demo.yaml's crops for the same
number of steps, four ways:

  (a) RoB-DINO from K prototypes fitted on the training images (spherical k-means, rob_ray.prototypes)
  (b) (a) with Sinkhorn-balanced teacher targets (method.teacher_norm=sinkhorn)
  (c) the `feature` objective (1 - cosine to the teacher's embedding), what a headless teacher got before
  (d) RoB-DINO from Lite0's real classifier logits (the demo's recipe; K = 1000 classes)

then k-NN (k=20, T=0.07) and a linear probe on val, plus the untrained student and the teacher's own
embedding as anchors. K defaults to 1000 so (a)/(b) match (d)'s prototype count.

    flock /tmp/rob_ray_bench.lock env PYTHONPATH=$PWD MALLOC_MMAP_THRESHOLD_=34359738368 \
        MALLOC_TRIM_THRESHOLD_=34359738368 MALLOC_TOP_PAD_=1073741824 .venv/bin/python experiments/bench_prototypes.py
    python experiments/bench_prototypes.py --smoke          # minutes: checks the pipeline, measures nothing
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rob_ray.config import Config, validate_config  # noqa: E402

# ../shared beside the project; a git worktree (wt/<name>) finds it one level further up.
DEFAULT_DATA = next((p / "shared" / "data" / "imagenette2-224" for p in (REPO.parent, REPO.parent.parent)
                     if (p / "shared" / "data" / "imagenette2-224").is_dir()), REPO.parent / "shared" / "data" / "imagenette2-224")


def base_config(data: Path, out: Path, steps: int) -> dict[str, Any]:
    """demo.yaml's student, crops and optimiser, on the Imagenette train split, `steps` steps."""
    return {
        "seed": 0,
        "data": {"path": str(data / "train"), "num_actors": 1, "cpus_per_actor": 1.0},
        "augment": {"num_global": 2, "num_local": 4, "global_size": 64, "local_size": 32},
        "teacher": {"kind": "efficientnet_lite0"},
        "student": {"arch": "resnet10t", "head": {"hidden_dim": 1024, "bottleneck_dim": 256}},
        "optim": {"epochs": 1, "batch_size": 64, "lr": 0.005, "warmup_epochs": 0.1, "weight_decay": 0.04,
                  "weight_decay_end": 0.1, "max_steps": steps},
        "scaling": {"num_workers": 0, "cpus_per_worker": 2.0, "torch_threads": 2},
        "run": {"storage_path": str(out), "checkpoint_every_steps": 100000, "log_every_steps": 25},
    }


def row_configs(base: dict[str, Any], k: int, images: int, iterations: int) -> dict[str, Config]:
    fitted = {"fit": {"k": k, "images": images, "iterations": iterations, "engine": "local"}}
    rows = {
        "a": ({"prototypes": fitted}, {"name": "dino"}),
        "b": ({"prototypes": fitted}, {"name": "dino", "teacher_norm": "sinkhorn"}),
        "c": ({}, {"name": "feature"}),
        "d": ({}, {"name": "dino", "teacher_temp": 1.0}),  # classifier logits: natural temperature 1 (demo.yaml)
    }
    out = {}
    for name, (teacher, method) in rows.items():
        d = copy.deepcopy(base)
        d["teacher"].update(copy.deepcopy(teacher))
        d["method"] = method
        d["run"]["name"] = f"row_{name}"
        out[name] = validate_config(d)
    return out


LABELS = {"a": "(a) RoB, fitted prototypes", "b": "(b) RoB, fitted prototypes + Sinkhorn",
          "c": "(c) feature objective", "d": "(d) RoB, Lite0 classifier logits"}


def last_metrics(run_dir: Path) -> dict[str, Any]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines if x.strip()]
    return rows[-1] if rows else {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default=str(REPO / "runs" / "bench_prototypes"))
    p.add_argument("--steps", type=int, default=150, help="training steps per row (batch 64)")
    p.add_argument("--k", type=int, default=1000, help="fitted prototypes (default: Lite0's 1000 classes)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--eval-max-images", type=int, default=None, help="cap per split for k-NN / linear")
    p.add_argument("--rows", default="abcd")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.k, args.iterations, args.eval_max_images = 2, 16, 3, 60
    import torch

    from rob_ray.data.sources import scan_images
    from rob_ray.eval.embedders import EmbedSpec
    from rob_ray.eval.runner import evaluate_features, labelled_splits, split_features
    from rob_ray.prototypes.fit import ensure_prototypes
    from rob_ray.train.context import LocalContext
    from rob_ray.train.loop import train_loop

    t0 = time.perf_counter()
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    base = base_config(data, out, args.steps)
    table = scan_images(base["data"]["path"], max_images=400 if args.smoke else None)
    if args.smoke:
        base["data"]["max_images"] = 400
    cfgs = row_configs(base, args.k, len(table), args.iterations)
    results: dict[str, Any] = {"steps": args.steps, "k": args.k, "data": str(data), "rows": {}}
    ckpts: dict[str, Path] = {}
    for name in args.rows:
        cfg = cfgs[name]
        t1 = time.perf_counter()
        if cfg.teacher.prototypes is not None:
            cfg = ensure_prototypes(cfg, table)  # fit() would too; here so the fit time is its own number
            fit_json = json.loads((Path(cfg.teacher.prototypes.head).parent / "fit.json").read_text())
            results["fit"] = {k: fit_json[k] for k in ("k", "embedded_images", "objective", "iterations", "cluster_sizes",
                                                        "label_purity", "targets", "recommended_teacher_temp",
                                                        "seconds")}
        t2 = time.perf_counter()
        run_dir = out / cfg.run.name
        if run_dir.exists():
            shutil.rmtree(run_dir)  # every row trains from scratch (no resume of an older benchmark)
        ctx = LocalContext(table, run_dir, num_to_keep=1)  # in-process, no Ray: augmentation and step share 2 cores
        train_loop(cfg, ctx, len(table))
        ckpts[name] = ctx.checkpoints.list()[-1]
        m = last_metrics(run_dir)
        results["rows"][name] = {
            "label": LABELS[name], "config": cfg.model_dump(mode="json"), "prepare_s": round(t2 - t1, 1),
            "train_s": round(time.perf_counter() - t2, 1), "steps": m.get("step"), "final_loss": m.get("loss"),
            "teacher_temp": getattr(cfg.method, "teacher_temp", None),
            "teacher_entropy": m.get("teacher_entropy"), "usage_frac": m.get("teacher_prototypes_used_frac"),
            "usage_perplexity": m.get("teacher_usage_perplexity"),
        }
        print(f"[bench] row {name} trained in {time.perf_counter() - t2:.0f}s: loss {m.get('loss')}, "
              f"teacher entropy {m.get('teacher_entropy')}", flush=True)
    tables = labelled_splits(data, args.eval_max_images)
    any_cfg = cfgs["d"]
    config = any_cfg.model_dump(mode="json")
    mean = std = (0.5, 0.5, 0.5)  # Lite0's normalisation, the students' input normalisation in every row
    specs = [(name, EmbedSpec("student", LABELS[name], cfgs[name].model_dump(mode="json"), str(ckpts[name]), mean=mean,
                              std=std)) for name in args.rows]
    specs += [("untrained", EmbedSpec("student", "resnet10t untrained", config, None, mean=mean, std=std)),
              ("teacher", EmbedSpec("teacher", "teacher Lite0 pooled 1280-d", config))]
    torch.set_num_threads(2)
    for name, spec in specs:
        t3 = time.perf_counter()
        fb, lb, fq, lq = split_features(spec, tables, 64, "local", 128, 1, "cpu")
        r = evaluate_features(fb, lb, fq, lq, ("knn", "linear"), ks=[20],
                              linear_kwargs={"epochs": 30, "lrs": [0.1, 1.0], "weight_decays": [0.0, 1e-4]})
        results["rows"].setdefault(name, {"label": spec.name})
        results["rows"][name].update({"knn20": r["knn"]["20"], "linear": r["linear"]["test_top1"], "dim": r["dim"]})
        print(f"[bench] evaluated {spec.name} in {time.perf_counter() - t3:.0f}s: k-NN {r['knn']['20']:.1f}, "
              f"linear {r['linear']['test_top1']:.1f}", flush=True)
    results["total_s"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(table_md(results))
    return 0


def table_md(r: dict[str, Any]) -> str:
    steps = sorted({row["steps"] for row in r["rows"].values() if row.get("steps")})
    lines = [f"Imagenette val top-1 % at 64 px (k-NN k=20 T=0.07; linear probe), student resnet10t, "
             f"{'/'.join(map(str, steps))} steps x 64 images per row, 2+4 crops at 64/32 px",
             "", "| row | teacher targets | K | teacher_temp | train s | teacher entropy | usage (frac / perplexity) "
             "| k-NN | linear |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for row in r["rows"].values():
        cfg = row.get("config")
        k = "-" if cfg is None else (r["k"] if cfg["teacher"].get("prototypes") else
                                     ("1280-d" if cfg["method"]["name"] == "feature" else 1000))
        ent, use, ppl = row.get("teacher_entropy"), row.get("usage_frac"), row.get("usage_perplexity")
        lines.append(
            f"| {row['label']} | {'-' if cfg is None else cfg['method'].get('teacher_norm', cfg['method']['name'])} | {k} "
            f"| {row.get('teacher_temp') if row.get('teacher_temp') is not None else '-'} "
            f"| {row.get('train_s', '-')} | {'-' if ent is None else f'{ent:.2f}'} "
            f"| {'-' if use is None else f'{use:.2f} / {ppl:.0f}'} "
            f"| {row['knn20']:.1f} | {row['linear']:.1f} |")
    if "fit" in r:
        f = r["fit"]
        lines.append("")
        lines.append(f"Fit: K={f['k']} on {f['embedded_images']} images, mean cosine {f['objective']:.3f} after "
                     f"{f['iterations']} iterations, cluster sizes min/median/max {f['cluster_sizes']['min']}/"
                     f"{f['cluster_sizes']['median']:g}/{f['cluster_sizes']['max']}, label purity "
                     f"{100 * (f['label_purity'] or 0):.1f}%, recommended teacher_temp {f['recommended_teacher_temp']}, "
                     f"seconds {f['seconds']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
