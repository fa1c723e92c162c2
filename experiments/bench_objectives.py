"""Per-step time of every registered objective at tiny size on CPU.

The method list comes from the config's discriminated `MethodConfig` union, so every method that is
selectable by config gets a row; a method that cannot be built here gets a row with its error
(nothing is skipped silently). Teachers are random weights written in each official layout.

    PYTHONPATH=$PWD python experiments/bench_objectives.py [--steps 10] [--threads 2]

Measures `rob_ray.train.step.TrainStep`, what the training loop runs: student forward + teacher
forward + loss + backward + clipping + the non-finite guard + AdamW step + the method's after-step
hook (EMA), on pre-normalised random crops (no data loading), median over steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rob_ray.config import load_config
from rob_ray.methods import Views, build_method, build_models
from rob_ray.train.loop import build_optimizer
from rob_ray.train.step import TrainStep
from tests.helpers_ckpt import write_dino_checkpoint, write_swav_checkpoint, write_timm_classifier

SIZES = ["augment.global_size=64", "augment.local_size=32", "augment.num_local=4", "optim.batch_size=16"]


def method_names() -> list[str]:
    """Every registered method (the registry is the list; tests check it equals the config's)."""
    from rob_ray.methods import list_methods

    return list_methods()


def overrides_for(name: str, tmp: Path) -> list[str]:
    """Tiny teacher/student per method; methods added later fall back to a DINO-layout ViT teacher."""
    if name == "swav":
        return ["teacher.kind=swav", f"teacher.checkpoint={write_swav_checkpoint(tmp / 'swav.pth', k=3000, dim=128)}",
                "student.arch=resnet18", "student.head.hidden_dim=512"]
    if name == "kd":
        return ["teacher.kind=timm", "teacher.arch=resnet18",
                f"teacher.checkpoint={write_timm_classifier(tmp / 'cls.pth', 'resnet18', 1000)}", "student.arch=resnet18"]
    if name == "dino_scratch":
        return ["method.out_dim=4096", "student.arch=resnet18", "student.head.hidden_dim=512"]
    student = "resnet18" if name == "dino" else "vit_tiny_patch16_224"
    ckpt = tmp / "dino_vit_tiny.pth"
    if not ckpt.exists():
        write_dino_checkpoint(ckpt, "vit_tiny_patch16_224", k=4096)
    return ["teacher.kind=dino", "teacher.arch=vit_tiny_patch16_224", f"teacher.checkpoint={ckpt}",
            f"student.arch={student}", "student.head.hidden_dim=512"]


def time_method(name: str, tmp: Path, steps: int) -> tuple[str, str, float]:
    cfg = load_config(None, [f"method.name={name}", *SIZES, *overrides_for(name, tmp)])
    torch.manual_seed(0)
    teacher, student = build_models(cfg)
    method = build_method(cfg.method, teacher, student)
    method.set_schedule(steps + 2, steps + 2)
    step_fn = TrainStep(method, student, build_optimizer(cfg, student), lr=1e-4, weight_decay=cfg.optim.weight_decay,
                        clip_grad=cfg.optim.clip_grad)
    a, b = cfg.augment, cfg.optim.batch_size
    views = Views(torch.randn(a.num_global * b, 3, a.global_size, a.global_size),
                  torch.randn(a.num_local * b, 3, a.local_size, a.local_size), torch.arange(b) % 10, b, a.num_global)
    student.train()
    times = []
    for step in range(steps + 2):
        t0 = time.perf_counter()
        step_fn(views, step)
        if step >= 2:  # the first steps allocate
            times.append(time.perf_counter() - t0)
    return cfg.student.arch, getattr(teacher, "name", type(teacher).__name__), 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    a = load_config(None, SIZES).augment
    print(f"# per-step time, CPU, {args.threads} threads, batch 16, {a.num_global}x{a.global_size} + "
          f"{a.num_local}x{a.local_size} crops, median of {args.steps} steps")
    print("| method | student | teacher | ms / step |")
    print("|---|---|---|---:|")
    with tempfile.TemporaryDirectory() as d:
        for name in method_names():
            try:
                arch, teacher, ms = time_method(name, Path(d), args.steps)
                print(f"| {name} | {arch} | {teacher} | {ms:.0f} |", flush=True)
            except Exception as exc:  # a row per method, whatever happens
                print(f"| {name} | - | - | error: {type(exc).__name__}: {str(exc).splitlines()[0][:100]} |", flush=True)


if __name__ == "__main__":
    main()
