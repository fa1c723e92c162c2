"""The demo / end-of-run table: k-NN of the trained student vs its untrained self vs the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rob_ray.config import Config
from rob_ray.data.sources import scan_images
from rob_ray.eval.features import extract_features
from rob_ray.eval.knn import knn_top1

__all__ = ["eval_splits", "knn_report"]


def eval_splits(cfg: Config) -> tuple[str, str]:
    """(memory bank, queries): `data.eval_path/{train,val}`, or the training root's sibling `val/`."""
    if cfg.data.eval_path:
        root = Path(cfg.data.eval_path)
        return str(root / "train"), str(root / "val")
    train = Path(cfg.data.path)
    return str(train), str(train.parent / "val")


def knn_report(cfg: Config, checkpoint_dir: Path | None, teacher: Any = None, k: int = 20,
               temperature: float = 0.07) -> dict[str, Any]:
    from rob_ray.methods import build_models, needs_pretrained_teacher, restore_student
    from rob_ray.train.checkpoint import load_state

    if cfg.students:  # a multi-student run: its first student (the checkpoint's top-level `student`)
        from rob_ray.config import student_configs

        cfg = student_configs(cfg)[0][1]
    bank_path, query_path = eval_splits(cfg)
    bank, queries = scan_images(bank_path), scan_images(query_path)
    if not needs_pretrained_teacher(cfg.method):
        teacher = None  # the EMA teacher is rebuilt below and loaded from the checkpoint
    size = cfg.augment.global_size
    torch.manual_seed(cfg.seed)  # the same initial weights the run started from
    teacher, untrained = build_models(cfg, teacher)
    trained = untrained
    untrained.eval()
    mean, std = teacher.mean, teacher.std
    if checkpoint_dir is not None:
        state = load_state(checkpoint_dir)
        trained = restore_student(cfg, state["student"])  # exactly as trained (the method's registry entry)
        if not needs_pretrained_teacher(cfg.method):
            teacher.load_state_dict({k[len("ema."):]: v for k, v in state["method"].items() if k.startswith("ema.")})
    teacher.eval()
    rows = []
    for name, model in (("student (RoB-trained)", trained), ("student (untrained)", untrained),
                        (f"teacher {teacher.name}", teacher)):
        fb, lb = extract_features(model.embed, bank, size, mean, std)
        fq, lq = extract_features(model.embed, queries, size, mean, std)
        rows.append({"model": name, "knn_top1": round(knn_top1(fb, lb, fq, lq, k, temperature), 2),
                     "dim": int(fb.shape[1])})
    lines = [f"k-NN top-1 (weighted cosine, k={k}, T={temperature}) at {size}px: "
             f"{len(bank)} memory-bank images -> {len(queries)} held-out queries",
             "", "| model | feature dim | k-NN top-1 % |", "|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['dim']} | {r['knn_top1']:.1f} |" for r in rows]
    return {"rows": rows, "k": k, "temperature": temperature, "size": size, "bank": bank_path,
            "queries": query_path, "table": "\n".join(lines)}
