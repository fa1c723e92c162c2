"""The accuracy benchmark: does RoB beat training the same small model by SSL from scratch?

On a labelled ImageFolder (default ../shared/data/imagenette2-224) it trains the same student for
the same budget (a) by RoB-DINO from the frozen teacher and (b) by DINO from scratch (method
`dino_scratch`, an EMA teacher of the student), then reports k-NN / linear / 5-shot for (a), (b),
the untrained student and the teacher as one markdown table + bar plot. Everything is read from
experiments/configs/benchmark_accuracy.yaml; overrides `train.KEY=VALUE` apply to both runs.

    python experiments/benchmark_accuracy.py                        # the full CPU benchmark
    python experiments/benchmark_accuracy.py --smoke --skip-scratch # tiny end-to-end check
    python experiments/benchmark_accuracy.py train.scaling.use_gpu=true train.augment.global_size=224

Outputs in --out (default runs/benchmark_accuracy): rob/ and scratch/ run folders, eval.json (with
timings), eval.md, accuracy.png, lowshot.png, training_curves.png (of the RoB run).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rob_ray.config import Config, ConfigError, apply_overrides, validate_config  # noqa: E402

DEFAULT_CONFIG = REPO / "experiments" / "configs" / "benchmark_accuracy.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenette2-224"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--data", default=str(DEFAULT_DATA), help="labelled ImageFolder with train/ and val/")
    p.add_argument("--out", default=str(REPO / "runs" / "benchmark_accuracy"))
    p.add_argument("--smoke", action="store_true", help="tiny run: checks the pipeline end to end, measures nothing")
    p.add_argument("--skip-scratch", action="store_true", help="leave out (b), the SSL-from-scratch baseline")
    p.add_argument("overrides", nargs="*", help="train.KEY=VALUE (both runs) or evaluation.KEY=VALUE")
    return p.parse_args()


def build_configs(spec: dict[str, Any], data: Path, out: Path, smoke: bool, skip_scratch: bool,
                  overrides: list[str]) -> tuple[Config, Config | None, dict[str, Any]]:
    """(RoB config, scratch config or None, evaluation settings). Exits with a clear message when
    the scratch method is not available."""
    spec = copy.deepcopy(spec)
    apply_overrides(spec, overrides)
    train = spec["train"]
    train_overrides = list(spec.get("smoke", {}).get("train", [])) if smoke else []
    evaluation = {**spec["evaluation"], **(spec.get("smoke", {}).get("evaluation", {}) if smoke else {})}
    path = Path(train.get("data", {}).get("path", "train"))
    train.setdefault("data", {})["path"] = str(path if path.is_absolute() else data / path)
    train.setdefault("run", {})["storage_path"] = str(out)

    def make(method: dict[str, Any], name: str) -> Config:
        d = copy.deepcopy(train)
        d["method"] = dict(method)
        d["run"]["name"] = name
        return validate_config(apply_overrides(d, train_overrides))

    rob = make(spec["rob_method"], "rob")
    scratch = None
    if not skip_scratch:
        try:
            scratch = make(spec["scratch_method"], "scratch")
        except ConfigError as exc:
            raise SystemExit(
                f"benchmark error: the SSL-from-scratch baseline method '{spec['scratch_method'].get('name')}' is not "
                f"available in this rob_ray ({exc}); merge the branch that adds it, or rerun with --skip-scratch "
                "to benchmark RoB, the untrained student and the teacher only") from None
    return rob, scratch, evaluation


def main() -> int:
    args = _parse()
    from rob_ray.checks.preflight import preflight
    from rob_ray.eval.embedders import EmbedSpec
    from rob_ray.eval.runner import evaluate_features, labelled_splits, markdown_table, split_features, write_results
    from rob_ray.train.launch import fit

    t0 = time.perf_counter()
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    spec = yaml.safe_load(Path(args.config).read_text())
    try:
        rob_cfg, scratch_cfg, ev = build_configs(spec, data, out, args.smoke, args.skip_scratch, args.overrides)
        tables = labelled_splits(data, ev.get("max_images"))
        pre = preflight(rob_cfg)
    except (ConfigError, ValueError) as exc:
        print(f"benchmark error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    plan = pre.plan
    print(f"[bench] {plan['teacher']} -> {plan['student']} on {plan['images']} images, {plan['views']}, "
          f"{plan['total_steps']} steps x {plan['global_batch']} images per run; runs: rob"
          f"{', scratch' if scratch_cfg else ''}", flush=True)
    timings: dict[str, float] = {}
    ckpts: dict[str, Path] = {}
    for name, cfg in (("rob", rob_cfg), ("scratch", scratch_cfg)):
        if cfg is None:
            continue
        t1 = time.perf_counter()
        result = fit(cfg, table=pre.table)
        timings[f"train_{name}_s"] = round(time.perf_counter() - t1, 1)
        ckpts[name] = result.checkpoint_dir
        print(f"[bench] trained {name} in {timings[f'train_{name}_s']:.0f}s -> {result.checkpoint_dir}", flush=True)

    config = rob_cfg.model_dump(mode="json")
    mean, std = pre.teacher.mean, pre.teacher.std
    arch = rob_cfg.student.arch
    specs = [EmbedSpec("student", f"{arch} RoB from {rob_cfg.teacher.kind} (a)", config, str(ckpts["rob"]),
                       mean=mean, std=std)]
    if "scratch" in ckpts:
        specs.append(EmbedSpec("student", f"{arch} {scratch_cfg.method.name} from scratch (b)",
                               scratch_cfg.model_dump(mode="json"), str(ckpts["scratch"]), mean=mean, std=std))
    specs += [EmbedSpec("student", f"{arch} untrained", config, None, mean=mean, std=std),
              EmbedSpec("teacher", f"teacher {rob_cfg.teacher.kind}", config)]
    results: dict[str, Any] = {"data": str(data), "size": ev["size"], "knn_temperature": 0.07,
                               "run_dir": str(out / "rob"), "engine": ev["engine"], "smoke": args.smoke,
                               "train_config": config, "models": {}}
    t2 = time.perf_counter()
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # engine=local; Ray actors pick their own
    for s in specs:
        fb, lb, fq, lq = split_features(s, tables, ev["size"], ev["engine"], 128, 1, device)
        results["models"][s.name] = evaluate_features(
            fb, lb, fq, lq, ks=ev["knn_k"],
            linear_kwargs={"epochs": ev["linear_epochs"], "lrs": ev["linear_lrs"],
                           "weight_decays": ev["linear_weight_decays"]},
            lowshot_kwargs={"shots": ev["shots"], "fractions": ev["fractions"], "num_draws": ev["draws"]})
        print(f"[bench] evaluated {s.name}", flush=True)
    timings["eval_s"] = round(time.perf_counter() - t2, 1)
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    results["timings"] = timings
    results["table"] = markdown_table(results)
    written = write_results(results, out)
    print(results["table"])
    print(f"[bench] wall time {timings['total_s']:.0f}s ({json.dumps(timings)}); files: "
          f"{', '.join(str(p) for p in written.values())}")
    if ev["engine"] == "ray":
        import ray

        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
