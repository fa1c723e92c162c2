"""Per-step time of RoB-DINO / RoB-iBOT / RoB-MSN at tiny size on CPU (plain torch, no Ray).

One step = `rob_ray.train.step.TrainStep`, what the training loop runs: the method (teacher on the
globals, masks / token dropping, student on all crops, loss) + backward + clipping + the non-finite
guard + AdamW. Teachers are random weights written in the
official iBOT / MSN / DINO file layouts (no download). Prints a markdown table.

    PYTHONPATH=. python experiments/bench_ibot_msn_step.py [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rob_ray.config import TeacherConfig, load_config
from rob_ray.methods import Views, build_method, build_models
from rob_ray.models import build_teacher
from rob_ray.train.loop import build_optimizer
from rob_ray.train.step import TrainStep
from tests.ssl_checkpoints import write_ibot_checkpoint, write_msn_checkpoint

SIZES = {  # name: (student arch, global px, local px, locals, batch, student head hidden/bottleneck)
    "tiny (test_vit, 2x64 + 2x32, batch 8)": ("test_vit", 64, 32, 2, 8, (64, 32)),
    "vit_tiny student (2x112 + 4x48, batch 16)": ("vit_tiny_patch16_224", 112, 48, 4, 16, (256, 64)),
}


def _teacher(method: str, root: Path):
    if method == "msn":
        write_msn_checkpoint(root / "msn.pth.tar", timm_arch="test_vit", k=256, hidden=256, out=64)
        return build_teacher(TeacherConfig(kind="msn", checkpoint=str(root / "msn.pth.tar"), arch="test_vit"))
    # iBOT's file carries a DINO-compatible head too: the DINO row uses its CLS head.
    write_ibot_checkpoint(root / "checkpoint.pth", k=256, hidden=256, bottleneck=64)
    return build_teacher(TeacherConfig(kind="ibot" if method == "ibot" else "dino", checkpoint=str(root / "checkpoint.pth")))


def bench(method: str, size: tuple, steps: int, root: Path) -> float:
    arch, gpx, lpx, n_local, batch, (hidden, bottleneck) = size
    teacher = _teacher(method, root)
    overrides = [f"method.name={method}", f"student.arch={arch}", f"student.head.hidden_dim={hidden}",
                 f"student.head.bottleneck_dim={bottleneck}"]
    if method == "msn":
        overrides.append(f"method.projector_hidden_dim={hidden}")
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    teacher, student = build_models(cfg, teacher)  # the method's registry entry builds its student
    m = build_method(cfg.method, teacher, student)
    step_fn = TrainStep(m, student, build_optimizer(cfg, student), lr=1e-4, weight_decay=cfg.optim.weight_decay,
                        clip_grad=cfg.optim.clip_grad)
    views = Views(torch.randn(2 * batch, 3, gpx, gpx), torch.randn(n_local * batch, 3, lpx, lpx),
                  torch.zeros(batch, dtype=torch.long), batch, 2)
    times = []
    for step in range(steps + 2):  # 2 warm-up steps
        t0 = time.perf_counter()
        step_fn(views, step)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.steps} steps after 2 warm-up\n")
    print("| size | method | ms / step |")
    print("|---|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size_name, size in SIZES.items():
            for method in ("dino", "ibot", "msn"):
                ms = 1000 * bench(method, size, args.steps, Path(tmp))
                print(f"| {size_name} | {method} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
