"""Throughput benchmark of a RoB-DINO step: one table, per stage and end to end.

Rows (all in one run, same device):
  (a) rob_ray from JPEG bytes: decode (nvJPEG on GPU, PIL threads on CPU) -> batched multi-crop
      on the device -> fast step (bf16 teacher weights + autocast, channels_last, torch.compile,
      fused AdamW on GPU);
  (a2) the training loop's pipeline once Ray Data has decoded: `ViewStream` copies and crops
      step t+1 (on a CUDA side stream) while `TrainStep` computes step t;
  (b) rob_ray's step (`rob_ray.train.step.TrainStep`, what the loop runs) on synthetic on-device
      views (its stages give the teacher-alone and student-alone rates);
  (c) a naive plain-PyTorch step (eager fp32, per-pair log-softmax, foreach AdamW, a loss
      `.item()` per step) on the same synthetic views; its data path is the per-image torchvision
      CPU policy, measured per core and scaled to the host's cores (a bound, not a run);
  plus augmentation alone (GPU batched vs CPU per image) and JPEG decode alone.

JPEG inputs: the repo's demo photos (112 px) upscaled to 224 px and re-encoded at quality 75 at
start-up (torchvision.io.encode_jpeg), so no data outside the repository is needed.
Imports neither Ray nor pydantic (the lent GPU box has neither). Writes JSON to --out.

    python experiments/bench.py                 # anchor: ViT-B/16 + 65,536 prototypes -> ResNet-18, batch 128
    python experiments/bench.py --tiny --out /tmp/bench.json   # seconds on a CPU (CI smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rob_ray.data.batched_augment import BatchedMultiCrop, step_generator
from rob_ray.data.decode import decode_rgb
from rob_ray.data.mapper import fit_image
from rob_ray.data.multicrop import MultiCropAugment, draw_views, sample_seed
from rob_ray.data.policy import CropPolicy
from rob_ray.data.views import ViewsBuilder, ViewStream
from rob_ray.losses import DinoLoss
from rob_ray.methods import Views
from rob_ray.methods.dino import DinoMethod
from rob_ray.models import DINOHead, build_student
from rob_ray.models.teachers import IMAGENET_MEAN, IMAGENET_STD, Teacher
from rob_ray.models.teachers.timm_teacher import create_timm_backbone
from rob_ray.train.compiled import TeacherMode, prepare_teacher, teacher_mode
from rob_ray.train.step import TrainStep, make_optimizer
from rob_ray.train.timing import StageClock, flops_per_image, mfu, time_calls

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models and sizes (CPU smoke test)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--teacher", default="vit_base_patch16_224")
    ap.add_argument("--prototypes", type=int, default=65536)
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--global-size", type=int, default=224)
    ap.add_argument("--local-size", type=int, default=96)
    ap.add_argument("--num-local", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per row (the first compiles)")
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: on for CUDA")
    ap.add_argument("--naive-compiled", action="store_true", help="also time the naive step bf16+channels_last+compile")
    ap.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default on CUDA: 793, the measured H100 bf16 rate)")
    ap.add_argument("--cpu-aug-images", type=int, default=16, help="images for the per-image CPU augmentation rate")
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip optional rows after this many seconds")
    ap.add_argument("--out", default="bench.json")
    args = ap.parse_args(argv)
    if args.tiny:
        args.teacher, args.prototypes, args.student = "test_vit", 256, "test_resnet"
        args.batch, args.global_size, args.local_size, args.num_local = 4, 32, 16, 2
        args.steps, args.warmup, args.cpu_aug_images = 2, 1, 2
        torch.set_num_threads(1)  # tiny ops: extra intra-op threads only add synchronisation
    return args


# ---------------------------------------------------------------- set-up


def build_models(args: argparse.Namespace) -> tuple[Teacher, nn.Module]:
    """Random-weight teacher (timm backbone + DINO head of `prototypes`) and the student."""
    torch.manual_seed(0)
    backbone = create_timm_backbone(args.teacher, num_classes=0)
    width = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    head = DINOHead(width, args.prototypes, hidden_dim=2048 if not args.tiny else 64,
                    bottleneck_dim=256 if not args.tiny else 32)
    teacher = Teacher(backbone, head, num_prototypes=args.prototypes, embed_dim=width, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, name=args.teacher)
    head_cfg = SimpleNamespace(hidden_dim=2048 if not args.tiny else 64, bottleneck_dim=256 if not args.tiny else 32,
                               num_layers=3, use_bn=False, norm_last_layer=True, out_dim=None)
    student = build_student(SimpleNamespace(arch=args.student, pretrained=False, drop_path_rate=0.0,
                                            feature="pre_logits", head=head_cfg), out_dim=args.prototypes)
    return teacher, student


def make_jpegs(n: int, size: int) -> list[torch.Tensor]:
    """The demo photos upscaled to `size` and re-encoded (quality 75, like Imagenette)."""
    files = sorted((REPO / "experiments" / "demo_data" / "train").rglob("*.JPEG"))
    out = []
    for f in (files * (n // max(len(files), 1) + 1))[:n]:
        img = torchvision.io.decode_jpeg(torchvision.io.read_file(str(f)), mode=torchvision.io.ImageReadMode.RGB)
        img = torchvision.transforms.v2.functional.resize(img, [size, size], antialias=True)
        out.append(torchvision.io.encode_jpeg(img, quality=75))
    return out


def synthetic_views(policy: CropPolicy, batch: int, device: torch.device, channels_last: bool) -> Views:
    gen = torch.Generator().manual_seed(123)

    def crops(n: int, s: int) -> torch.Tensor:
        x = torch.randn(n * batch, 3, s, s, generator=gen).to(device)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    loc = crops(policy.num_local, policy.local_size) if policy.num_local else None
    return Views(crops(policy.num_global, policy.global_size), loc, torch.full((batch,), -1, device=device), batch,
                 policy.num_global)


# ---------------------------------------------------------------- the two steps


class FastStep:
    """rob_ray's step as the loop builds it: `rob_ray.train.step.TrainStep` (the same object the loop
    runs: schedules, clipping, the non-finite guard, the optimiser) with the loop's choices — bf16
    teacher weights + autocast on GPU, channels_last, torch.compile, fused AdamW — timed by the
    loop's `StageClock` stages."""

    def __init__(self, teacher: Teacher, student: nn.Module, device: torch.device, compile_on: bool,
                 clock: StageClock, teacher_run: TeacherMode = "eager", example: torch.Tensor | None = None) -> None:
        cuda = device.type == "cuda"
        if cuda:
            teacher = teacher.to(torch.bfloat16)
        self.teacher = teacher.to(memory_format=torch.channels_last)
        self.student = student.to(memory_format=torch.channels_last)
        method = DinoMethod(self.teacher, self.student, DinoLoss(teacher.num_prototypes)).to(device)
        autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else None
        run_t, _ = prepare_teacher(self.teacher, teacher_run, example, autocast or contextlib.nullcontext)
        run_s = torch.compile(self.student, dynamic=False) if compile_on else self.student
        self.step = TrainStep(method, self.student, make_optimizer(self.student, "adamw", fused=cuda), lr=1e-4,
                              weight_decay=0.04, clip_grad=3.0, run_teacher=run_t, run_student=run_s, autocast=autocast,
                              clock=clock)

    def __call__(self, views: Views, step: int, while_computing=None) -> torch.Tensor:
        return self.step(views, step, while_computing=while_computing).out.loss.detach()


class NaiveStep:
    """What a plain PyTorch script does: eager, a log-softmax per (teacher, student) pair, the
    default (foreach) AdamW, and a loss `.item()` every step."""

    def __init__(self, teacher: Teacher, student: nn.Module, device: torch.device, bf16: bool = False,
                 channels_last: bool = False, compile_on: bool = False) -> None:
        self.teacher, self.student, self.device, self.bf16 = teacher, student, device, bf16
        if channels_last:
            self.teacher = teacher.to(memory_format=torch.channels_last)
            self.student = student.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        self.run_t = torch.compile(self.teacher) if compile_on else self.teacher
        self.run_s = torch.compile(self.student) if compile_on else self.student

    def __call__(self, views: Views, step: int) -> float:
        ctx = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        with ctx:
            with torch.no_grad():
                t = self.run_t(views.globals_).float()
            s = self.run_s(views.crops()).float()
        t_chunks, s_chunks = (t / 0.07).softmax(-1).chunk(views.num_global), s.chunk(len(s) // views.batch_size)
        losses = [-(t_chunks[i] * F.log_softmax(s_chunks[v] / 0.1, dim=-1)).sum(-1).mean()
                  for i in range(len(t_chunks)) for v in range(len(s_chunks))
                  if v == i or v >= views.num_global or len(t_chunks) == 1]  # RoB's same-view pairing
        loss = sum(losses) / len(losses)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.student.parameters(), 3.0)
        self.opt.step()
        return loss.item()


# ---------------------------------------------------------------- the benchmark


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    if cuda:  # PyTorch's default precision flags stay (the naive fp32 row is plain PyTorch)
        torch.backends.cudnn.benchmark = True
    compile_on = args.compile == "on" or (args.compile == "auto" and cuda)
    peak = args.peak_tflops or (793.0 if cuda else None)
    b = args.batch
    policy = CropPolicy(num_global=2, num_local=args.num_local, global_size=args.global_size,
                        local_size=args.local_size, crops_on="worker")
    rows: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "device": str(device), "device_name": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "cpu_cores": cores, "compile": compile_on, "peak_tflops": peak,
        "config": {k: v for k, v in vars(args).items() if k not in ("out",)}, "rows": rows, "checks": checks,
    }

    def save() -> None:  # after every section: a timeout still leaves the rows measured so far
        result["wall_s"] = time.perf_counter() - t_start
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))

    def row(name: str, sec_per_step: float | None, images: int, note: str = "", **extra: Any) -> dict[str, Any]:
        r = {"row": name, "img_per_s": images / sec_per_step if sec_per_step else None,
             "ms_per_step": 1000 * sec_per_step if sec_per_step else None, "note": note, **extra}
        rows.append(r)
        print(f"  {name:<44} {r['img_per_s'] or 0:>10.1f} img/s {r['ms_per_step'] or 0:>10.2f} ms/step  {note}",
              flush=True)
        return r

    print(f"[bench] device {device} ({torch.cuda.get_device_name() if cuda else platform.processor() or 'cpu'}), "
          f"torch {torch.__version__}, compile {compile_on}", flush=True)
    teacher, student = build_models(args)
    naive_teacher, naive_student = copy.deepcopy(teacher), copy.deepcopy(student)  # same initial weights
    teacher, student = teacher.to(device), student.to(device)

    # --- inputs
    jpegs = make_jpegs(max(2 * b, 8 if args.tiny else 256), 224 if not args.tiny else 48)
    r_img = max(args.global_size, 224 if not args.tiny else 48)
    checks["jpeg_mean_bytes"] = sum(j.numel() for j in jpegs) / len(jpegs)

    def decode_cpu(batch_jpegs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        def one(j: torch.Tensor):
            return fit_image(decode_rgb(j.numpy().tobytes()), r_img)

        with ThreadPoolExecutor(cores) as pool:
            imgs = list(pool.map(one, batch_jpegs))
        canvas = torch.zeros(len(imgs), 3, r_img, r_img, dtype=torch.uint8)
        for k, im in enumerate(imgs):
            canvas[k, :, : im.shape[1], : im.shape[2]] = torch.from_numpy(im)
        return canvas, torch.tensor([im.shape[1:] for im in imgs])

    def decode_gpu(batch_jpegs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = torchvision.io.decode_jpeg(batch_jpegs, device=device, mode=torchvision.io.ImageReadMode.RGB)
        sizes = torch.tensor([im.shape[1:] for im in imgs])
        if all(tuple(s) == tuple(sizes[0]) for s in sizes.tolist()):
            return torch.stack(imgs), sizes
        canvas = torch.zeros(len(imgs), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()), dtype=torch.uint8,
                             device=device)
        for k, im in enumerate(imgs):
            canvas[k, :, : im.shape[1], : im.shape[2]] = im
        return canvas, sizes

    def batch_jpegs(i: int) -> list[torch.Tensor]:
        return [jpegs[(i * b + k) % len(jpegs)] for k in range(b)]

    print("[bench] decode and augmentation alone", flush=True)
    t, _ = time_calls(lambda i: decode_cpu(batch_jpegs(i)), max(1, args.steps // 4), 1, device)
    row("decode: PIL + fit, CPU threads", t, b, f"{cores} threads")
    decode = decode_cpu
    if cuda:
        try:
            t, _ = time_calls(lambda i: decode_gpu(batch_jpegs(i)), args.steps, 2, device)
            row("decode: nvJPEG (decode_jpeg cuda)", t, b)
            decode = decode_gpu
        except (RuntimeError, TypeError) as exc:
            checks["nvjpeg_error"] = str(exc).splitlines()[0]
            print(f"[bench] nvJPEG unavailable ({checks['nvjpeg_error']}); CPU decode feeds (a)", flush=True)
    canvas, sizes = decode_cpu(batch_jpegs(0))
    aug = BatchedMultiCrop(policy, teacher.mean, teacher.std, channels_last=True)
    dev_canvas = canvas.to(device)
    t, _ = time_calls(lambda i: aug(dev_canvas, sizes, step_generator(0, 0, i)), args.steps, 2, device)
    row(f"augment: batched {policy.num_views} crops on {device.type}", t, b, "input uint8 on device")
    n_cpu = min(args.cpu_aug_images, b)
    t, _ = time_calls(lambda i: BatchedMultiCrop(policy, teacher.mean, teacher.std)(canvas[:n_cpu], sizes[:n_cpu],
                                                                                     step_generator(0, 0, i)),
                      1, 0 if args.tiny else 1, torch.device("cpu"))
    row("augment: batched, CPU tensors", t, n_cpu, f"{torch.get_num_threads()} torch threads")
    ref = MultiCropAugment(policy)
    hwc = [canvas[k, :, : int(sizes[k, 0]), : int(sizes[k, 1])].permute(1, 2, 0).numpy() for k in range(n_cpu)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for k, img in enumerate(hwc):
        ref(img, sample_seed(0, 0, k))
    per_image = (time.perf_counter() - t0) / n_cpu
    torch.set_num_threads(threads)
    cpu_aug = row("augment: torchvision per image, 1 core", per_image, 1,
                  f"x{cores} cores = {cores / per_image:.0f} img/s", cpu_ms_per_image=1000 * per_image)

    # --- (c) naive step, then (b) rob_ray synthetic, then (a) from JPEG bytes
    naive_teacher, naive_student = naive_teacher.to(device), naive_student.to(device)
    if cuda:
        torch.cuda.empty_cache()
    views = synthetic_views(policy, b, device, channels_last=False)
    print("[bench] (c) naive eager fp32 step", flush=True)
    naive = NaiveStep(naive_teacher, naive_student, device)
    t_naive, naive_first = time_calls(lambda i: naive(views, i), max(2, args.steps // 2), 1, device)
    row("(c) naive step: eager fp32, synthetic", t_naive, b)
    naive_e2e = 1.0 / max(t_naive / b, per_image / cores)
    row("(c) naive end to end (bound)", b / naive_e2e, b, "min(step, CPU aug x cores)")

    clock = StageClock(device)
    flops = flops_per_image(DinoMethod(teacher, student, DinoLoss(args.prototypes)), teacher, student, policy, device,
                            (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else
                            (lambda: torch.autocast("cpu", enabled=False)))
    checks["gflops_per_image"] = flops / 1e9
    print(f"[bench] {flops / 1e9:.1f} GFLOP per image; (b) rob_ray step, compile={compile_on}", flush=True)
    save()
    views_cl = synthetic_views(policy, b, device, channels_last=True)
    t_c0 = time.perf_counter()
    try:
        # as the loop resolves run.compile / run.compile_teacher (a RoB teacher is frozen)
        tmode = teacher_mode(None, None if args.compile == "auto" else compile_on, is_cuda=cuda, frozen_teacher=True)
        result["teacher_run"] = tmode
        fast = FastStep(teacher, student, device, compile_on, clock, tmode, views_cl.globals_)
        t_fast, fast_first = time_calls(lambda i: fast(views_cl, i), args.steps, args.warmup, device, clock)
    except Exception as exc:  # one device run: report and carry on uncompiled
        if not compile_on:
            raise
        checks["compile_error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        print(f"[bench] compiled step failed ({checks['compile_error']}); continuing eager", flush=True)
        compile_on = result["compile"] = False
        result["teacher_run"] = "eager"
        torch._dynamo.reset()
        clock.collect()
        fast = FastStep(teacher, student, device, False, clock)
        t_fast, fast_first = time_calls(lambda i: fast(views_cl, i), args.steps, args.warmup, device, clock)
    checks["compile_and_warmup_s"] = time.perf_counter() - t_c0 - t_fast * args.steps
    # The first warm-up step of each ran on identical weights and inputs: bf16/compiled vs eager fp32.
    ref_loss, fast_loss = naive_first[0], float(fast_first[0])
    checks["loss_eager_fp32"], checks["loss_fast"] = ref_loss, fast_loss
    checks["loss_rel_diff"] = abs(fast_loss - ref_loss) / abs(ref_loss)
    checks["loss_match"] = bool(checks["loss_rel_diff"] < (2e-2 if cuda else 1e-4))
    stages = clock.collect()
    per = {k: v / args.steps for k, v in stages.items()}
    rb = row("(b) rob_ray step, synthetic on-device", t_fast, b, "", mfu=mfu(b / t_fast, flops, peak))
    for k, v in per.items():
        row(f"    stage {k}", v, b)
    row("    teacher alone (from its stage)", per.get("teacher/forward"), b)
    row("    student alone (fwd+bwd+opt stages)", per.get("student/forward_backward", 0) + per.get("optimizer", 0), b)

    save()
    print("[bench] (a) rob_ray from JPEG bytes", flush=True)
    e2e_clock = clock

    def e2e(i: int) -> torch.Tensor:
        e2e_clock.start("decode")
        imgs, szs = decode(batch_jpegs(i))
        imgs = imgs.to(device, non_blocking=True)
        e2e_clock.stop("decode")
        e2e_clock.start("augment")
        g, loc = aug(imgs, szs, step_generator(0, 0, i))
        e2e_clock.stop("augment")
        return fast(Views(g, loc, torch.full((b,), -1, device=device), b, policy.num_global), i)

    t_e2e, _ = time_calls(e2e, args.steps, 1, device, clock)
    per = {k: v / args.steps for k, v in clock.collect().items()}
    ra = row("(a) rob_ray end to end from JPEG bytes", t_e2e, b, f"decode via {'nvJPEG' if decode is decode_gpu else 'CPU'}",
             mfu=mfu(b / t_e2e, flops, peak))
    for k, v in per.items():
        row(f"    stage {k}", v, b)

    # (a2) what the training loop runs once Ray Data has decoded: the worker's ViewStream copies and
    # crops step t+1 (a side stream on CUDA) while step t computes. Decoded batches with their
    # per-image draws are made ahead, as the data actors would.
    save()
    print("[bench] (a2) rob_ray loop pipeline: decoded batches -> crops of step t+1 overlapped -> step", flush=True)
    host_batches = []
    for k in range(4):
        canvas_k, sizes_k = decode_cpu(batch_jpegs(k))
        draws = np.stack([draw_views(sample_seed(0, k, j), h, w, policy) for j, (h, w) in enumerate(sizes_k.tolist())])
        host_batches.append({"image": canvas_k.numpy(), "size": sizes_k.numpy(), "draws": draws,
                             "valid": np.ones(b, dtype=bool), "label": np.full(b, -1)})

    def endless():
        i = 0
        while True:
            yield host_batches[i % len(host_batches)]
            i += 1

    stream = ViewStream(endless(), ViewsBuilder(policy, teacher.mean, teacher.std, device, channels_last=True),
                        clock=clock)

    def piped(i: int) -> torch.Tensor:
        built = next(stream)
        return fast(built.views, i, while_computing=stream.prefetch)

    t_pipe, _ = time_calls(piped, args.steps, 2, device, clock)
    per = {k: v / args.steps for k, v in clock.collect().items()}
    rp = row("(a2) rob_ray loop pipeline, decoded batches in", t_pipe, b,
             "crops of step t+1 on a side stream" if cuda else "crops in line (CPU)", mfu=mfu(b / t_pipe, flops, peak))
    for k, v in per.items():
        row(f"    stage {k}", v, b)
    checks["pipeline_vs_step_alone"] = rp["img_per_s"] / rb["img_per_s"]
    checks["speedup_e2e_vs_naive_eager_step"] = ra["img_per_s"] / (b / t_naive)
    checks["speedup_e2e_vs_naive_e2e_bound"] = ra["img_per_s"] / naive_e2e
    checks["speedup_synthetic_vs_naive_eager_step"] = rb["img_per_s"] / (b / t_naive)
    if cuda:
        checks["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30

    save()
    if args.naive_compiled and time.perf_counter() - t_start < args.budget_s:
        print("[bench] (c') naive bf16 + channels_last + compile", flush=True)
        del naive
        try:
            nc = NaiveStep(naive_teacher, naive_student, device, bf16=cuda, channels_last=True, compile_on=True)
            t_nc, _ = time_calls(lambda i: nc(views_cl, i), args.steps, args.warmup, device)
            row("(c') naive step: bf16+channels_last+compile", t_nc, b)
            checks["speedup_e2e_vs_naive_compiled_step"] = ra["img_per_s"] / (b / t_nc)
            checks["speedup_synthetic_vs_naive_compiled_step"] = rb["img_per_s"] / (b / t_nc)
        except Exception as exc:  # the optional row must not lose the table
            checks["naive_compiled_error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    elif args.naive_compiled:
        checks["naive_compiled_skipped"] = f"over --budget-s {args.budget_s}"

    result["cpu_aug_ms_per_image"] = cpu_aug["cpu_ms_per_image"]
    save()
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"\n| row | img/s | ms/step | MFU | note |   ({result['device_name']}, torch {result['torch']})")
    print("|---|---:|---:|---:|---|")
    for r in result["rows"]:
        m = r.get("mfu")
        print(f"| {r['row'].strip()} | {r['img_per_s'] or 0:.1f} | {r['ms_per_step'] or 0:.2f} | "
              f"{'' if m is None else f'{100 * m:.1f}%'} | {r['note']} |")
    print("checks:", json.dumps(result["checks"]), flush=True)


if __name__ == "__main__":
    main()
