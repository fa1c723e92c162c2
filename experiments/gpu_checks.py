"""Correctness checks of the device-side pieces, for the lent GPU (they also run on CPU tensors).

    python experiments/gpu_checks.py --out checks.json          # batched augmentation: CUDA vs CPU
    python experiments/gpu_checks.py --overlap --out o.json     # ViewStream: side-stream crops, no host sync
    python experiments/gpu_checks.py --loop --out loop.json     # the real train loop, crops in the worker

The augmentation check feeds the same images and the same seed to the CPU and the device path:
the draws are made on the host, so both make the same crops and colour ops and only the
arithmetic differs (fp16 resampling products on CUDA). `--loop` needs pydantic (config).
Exit code 1 when a check fails; every number is printed and written to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rob_ray.data.batched_augment import BatchedMultiCrop, step_generator
from rob_ray.data.decode import decode_rgb
from rob_ray.data.mapper import fit_image
from rob_ray.data.policy import CropPolicy

REPO = Path(__file__).resolve().parents[1]


def _photos(n: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    files = sorted((REPO / "experiments" / "demo_data" / "train").rglob("*.JPEG"))[::13][:n]
    canvas = torch.zeros(len(files), 3, side, side, dtype=torch.uint8)
    sizes = []
    for k, f in enumerate(files):
        img = fit_image(decode_rgb(f.read_bytes()), side)
        canvas[k, :, : img.shape[1], : img.shape[2]] = torch.from_numpy(img)
        sizes.append(img.shape[1:])
    return canvas, torch.tensor(sizes)


def augment_checks(device: torch.device, tiny: bool) -> dict[str, Any]:
    policy = CropPolicy(global_size=32, local_size=16, num_local=2) if tiny else CropPolicy()
    images, sizes = _photos(8 if tiny else 32, 64 if tiny else 256)
    aug = BatchedMultiCrop(policy)  # no normalisation: compare in [0, 1]
    out: dict[str, Any] = {"device": str(device)}
    cpu = aug(images, sizes, step_generator(0, 0, 5))
    dev = aug(images.to(device), sizes, step_generator(0, 0, 5))
    again = aug(images.to(device), sizes, step_generator(0, 0, 5))
    diffs = torch.cat([(a.cpu() - b.cpu()).abs().flatten() for a, b in zip(cpu, dev)])
    out["mean_abs_diff_vs_cpu"] = float(diffs.mean())
    out["max_abs_diff_vs_cpu"] = float(diffs.max())
    # Solarize is a threshold: pixels within rounding of 128/255 may land on either side.
    out["frac_pixels_diff_gt_0.05"] = float((diffs > 0.05).float().mean())
    out["deterministic"] = all(torch.equal(a, b) for a, b in zip(dev, again))
    black = torch.full((4, 3, 64, 64), 255, dtype=torch.uint8)
    bsizes = torch.tensor([[30, 50], [64, 64], [7, 3], [64, 20]])
    for k, (h, w) in enumerate(bsizes.tolist()):
        black[k, :, :h, :w] = 0
    strict = CropPolicy(global_size=40, local_size=16, num_local=4, blur_prob=(1.0, 1.0, 1.0),
                        solarize_prob=(1.0, 1.0, 1.0), color_jitter_prob=1.0)
    g, loc = BatchedMultiCrop(strict)(black.to(device), bsizes, step_generator(1, 0, 0))
    out["padding_never_read"] = bool(g.abs().max() == 0 and loc.abs().max() == 0)
    out["pass"] = bool(out["mean_abs_diff_vs_cpu"] < 3e-3 and out["frac_pixels_diff_gt_0.05"] < 1e-3
                       and out["deterministic"] and out["padding_never_read"])
    return out


def loop_check(device: torch.device, steps: int) -> dict[str, Any]:
    """A few steps of the real loop (LocalContext, no Ray) with the crops made on the GPU, default compile."""
    import timm

    from rob_ray.config import load_config
    from rob_ray.data import scan_images
    from rob_ray.train import LocalContext
    from rob_ray.train.loop import train_loop

    data = REPO / "experiments" / "demo_data" / "train"
    # timm's tiny test models compile fastest; older timm releases lack them.
    has_test = bool(timm.list_models("test_vit")) and bool(timm.list_models("test_resnet"))
    t_arch, s_arch = ("test_vit", "test_resnet") if has_test else ("vit_tiny_patch16_224", "resnet10t")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [
            f"data.path={data}", f"run.storage_path={tmp}", "run.name=gpu_check", "teacher.kind=timm",
            f"teacher.arch={t_arch}", f"student.arch={s_arch}", "student.head.hidden_dim=128",
            "student.head.bottleneck_dim=64", "augment.crops_on=worker", "augment.global_size=64", "augment.local_size=32",
            "augment.num_local=4", "augment.image_size=128", "scaling.use_gpu=true", "optim.batch_size=32",
            f"optim.max_steps={steps}", "run.log_every_steps=2", "run.peak_tflops=793", "scaling.num_workers=0",
            "data.max_images=256",
        ])
        table = scan_images(data, max_images=256)
        t0 = time.perf_counter()
        metrics = train_loop(cfg, LocalContext(table, Path(tmp) / "gpu_check", device=device), len(table))
        rows = [json.loads(line) for line in (Path(tmp) / "gpu_check" / "metrics.jsonl").read_text().splitlines()]
    keys = ("time/augment", "time/teacher/forward", "time/student/forward_backward", "time/optimizer", "mfu")
    return {"steps": metrics["step"], "loss": metrics["loss"], "wall_s": time.perf_counter() - t0, "last": rows[-1],
            "pass": bool(metrics["step"] == steps and metrics["loss"] == metrics["loss"]
                         and all(k in rows[-1] for k in keys))}


def overlap_check(device: torch.device, tiny: bool) -> dict[str, Any]:
    """`ViewStream` on the device: the views it hands out (crops made on a side stream, ordered by an
    event, prefetched while a stand-in step computes) equal the views built in line; preparing
    and handing them out never waits for the device (`set_sync_debug_mode("error")` raises on a
    sync); and the side-stream crops hide behind the step (time of both vs the step alone)."""
    import numpy as np

    from rob_ray.data import MultiCropMapper, SampleSchedule, scan_images
    from rob_ray.data.views import ViewsBuilder, ViewStream
    from rob_ray.train.timing import sync

    policy = CropPolicy(global_size=64 if tiny else 224, local_size=32 if tiny else 96, num_local=2 if tiny else 10,
                        image_size=128 if tiny else 256)
    table = scan_images(REPO / "experiments" / "demo_data" / "train", max_images=256)
    b = 8 if tiny else 64
    host = list(MultiCropMapper(table, policy, SampleSchedule(len(table), 1, b, 1), 0).iter_local(0, 4))
    host[1]["valid"] = np.array([False] + [True] * (b - 1))  # the unreadable-row path too
    build = ViewsBuilder(policy, (0.5,) * 3, (0.25,) * 3, device, channels_last=True)
    ref = [build(h) for h in host]  # in line, on the compute stream
    sync(device)
    out: dict[str, Any] = {"device": str(device)}
    cuda = device.type == "cuda"
    w = torch.randn(2048 if not tiny else 256, 2048 if not tiny else 256, device=device)

    def fake_step(n: int = 30 if not tiny else 2) -> torch.Tensor:
        x = w
        for _ in range(n):
            x = torch.tanh(x @ w) * 0.5
        return x

    stream = ViewStream(iter(host * 3), build)
    got = []
    next(stream)  # warm-up: first-use constants are made (one sync each, once)
    sync(device)
    errors = []
    for k in range(len(host) * 3 - 1):
        try:
            if cuda:
                torch.cuda.set_sync_debug_mode("error")
            built = next(stream)
            y = fake_step()
            stream.prefetch()
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
        except RuntimeError as exc:
            if cuda:
                torch.cuda.set_sync_debug_mode(0)
            errors.append(str(exc).splitlines()[0])
            break
        got.append(((k + 1) % len(host), built, y))
    sync(device)
    out["host_syncs"] = errors
    out["views_equal"] = bool(got) and all(
        torch.equal(bv.views.globals_, ref[i].views.globals_) and torch.equal(bv.views.locals_, ref[i].views.locals_)
        for i, bv, _ in got)
    # Overlap: step alone vs crops in line then step vs the stream (crops of t+1 during step t).
    import time

    def timed(fn, n=6):
        fn()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync(device)
        return (time.perf_counter() - t0) / n

    t_step = timed(fake_step)
    t_crops = timed(lambda: build(host[0]))
    serial = timed(lambda: (build(host[0]), fake_step()))
    s2 = ViewStream(iter(host * 100), build)

    def piped():
        next(s2)
        fake_step()
        s2.prefetch()

    t_piped = timed(piped)
    out.update({"step_ms": 1000 * t_step, "crops_ms": 1000 * t_crops, "serial_ms": 1000 * serial,
                "piped_ms": 1000 * t_piped, "hidden_frac": (serial - t_piped) / max(t_crops, 1e-9)})
    out["pass"] = bool(out["views_equal"] and not errors)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--loop", action="store_true", help="run the train-loop check instead")
    ap.add_argument("--overlap", action="store_true", help="run the ViewStream (side-stream crops) check instead")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="checks.json")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.loop:
        result = loop_check(device, args.steps)
    elif args.overlap:
        result = overlap_check(device, args.tiny)
    else:
        result = augment_checks(device, args.tiny)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, default=str), flush=True)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
