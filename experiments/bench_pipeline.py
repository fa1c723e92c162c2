"""Is rob_ray as fast as the plain PyTorch loop a user could write instead? One run, one table, CPU.

Rows (same machine, same run, same models from the same config):
  (1) rob_ray end to end: the real training (`rob_ray.train.launch.fit`: Ray Data actors decode and
      crop, the Ray Train worker steps), a fixed number of steps; the rate is every step's images over
      the run's own logging windows (its `img_per_s`), less the first window's wait for the actors to
      start. Not the windows after a warm-up alone: the actors decode ahead, most of a short run's
      images in its first windows, so later windows leave the decoding out (printed too, "after N");
      `--capped N` adds the run with `data.max_batches_ahead=N` (actors at the step's pace);
  (2) a hand-written plain-PyTorch loop doing the same work, written below: decode the JPEGs
      (torchvision), batched random-resized crops with `roi_align` + flip + colour jitter, the same
      teacher / student / DINO loss / clipping / AdamW, every core as torch threads, end to end
      from the files. Measured before and after (1): the table shows their mean (and both);
  (3) rob_ray's step alone (`rob_ray.train.step.TrainStep`, what the loop runs, with the teacher as the
      worker runs it: compiled frozen on CPU by default, `rob_ray.train.compiled`) on ready-made views;
  (2) and (3) compute in the run's precision, resolved as the worker resolves it (`run.precision`: `auto` is
      fp32 on a CPU); with `run.precision=bf16`, (2) runs in fp32 too (a script's default);
  plus the crops alone for both (rob_ray's `ViewsBuilder` on a decoded batch, the plain loop's), one
  data actor's per-image rate for the other placement, and with `--other-placement` (1) again with
  the other `augment.crops_on` (the measured reason for the default);
  (4) the no-overhead rate (`no_overhead_rate`): the step's core-seconds per image and the data
      actors', added and spread over every core, with nothing else running and no core idle: what
      (1) reaches when Ray costs nothing and the actors' work fits nowhere but beside the step (work
      hidden in the step's own idle moments could beat it). Beside the table: the step's nominal
      FLOP rate against a large matrix product on the same threads (the share of the CPU's
      arithmetic the step uses).

The process re-executes itself once with the CPU settings rob_ray gives its Ray workers (glibc malloc,
OpenMP wait policy: `WORKER_CPU_ENV` in rob_ray/train/launch.py), so the in-process rows (the plain
loop, the step alone) run with the same allocator and threading as rob_ray's worker.

    python experiments/bench_pipeline.py --other-placement   # the demo config (experiments/configs/demo.yaml)
    python experiments/bench_pipeline.py run.precision=bf16 augment.global_size=128 augment.local_size=64
        # bf16 autocast (CPUs with native bf16); at the demo's 64 / 32 px crops preflight refuses bf16 on CPU
    python experiments/bench_pipeline.py --smoke --out /tmp/p.json   # tiny settings, a CI test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rob_ray.train.launch import WORKER_CPU_ENV  # noqa: E402  (imports neither torch nor Ray)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "experiments" / "configs" / "demo.yaml"))
    ap.add_argument("--windows", type=int, default=3, help="timed logging windows of the rob_ray run (after warm-up)")
    ap.add_argument("--warmup-windows", type=int, default=2, help="untimed logging windows (Ray Data's actor "
                    "start and the first batches; a demo-length run is ~20 windows)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps of the in-process rows")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps of the in-process rows")
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the in-process rows (default: every "
                    "core, what a hand-written script gets; rob_ray's own run plans its worker's threads itself)")
    ap.add_argument("--no-ray", action="store_true", help="skip row (1)")
    ap.add_argument("--other-placement", action="store_true", help="also run (1) with the other augment.crops_on")
    ap.add_argument("--capped", type=int, default=None, metavar="N", help="also run (1) with data.max_batches_ahead=N "
                    "(the actors at the step's pace, as on a dataset larger than the object-store budget)")
    ap.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                    help="also run (1) with these config overrides (space-separated), right after the default run, "
                    "e.g. --variant run.compile_teacher=false; repeatable")
    ap.add_argument("--omp-wait", choices=["worker", "default"], default="worker",
                    help="OpenMP wait policy of the in-process rows: rob_ray's worker setting (passive), or libgomp's "
                    "default (spin first), what a hand-written script gets")
    ap.add_argument("--smoke", action="store_true", help="tiny settings (CI)")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.batch_size=32")
    args = ap.parse_args(argv)
    if args.smoke:
        args.overrides = ["student.arch=test_resnet", "student.head.hidden_dim=64", "student.head.bottleneck_dim=32",
                          "augment.global_size=32", "augment.local_size=16", "augment.num_local=2",
                          "optim.batch_size=8", "data.max_images=64", "run.log_every_steps=2", *args.overrides]
        args.windows, args.warmup_windows, args.steps, args.warmup = 2, 1, 2, 1
    return args


# ---------------------------------------------------------------- (2) the hand-written loop


class PlainLoop:
    """What a user writes in ~100 lines of plain PyTorch for the same work (no rob_ray code inside)."""

    def __init__(self, files: list[str], teacher, student, *, batch: int, n_global: int, n_local: int, g_size: int,
                 l_size: int, g_scale, l_scale, lr: float, weight_decay: float, t_temp: float, s_temp: float,
                 clip: float | None, seed: int = 0, bf16: bool = False) -> None:
        import contextlib

        import torch

        self.torch = torch
        self.files, self.batch = files, batch
        self.views = [(g_size, g_scale)] * n_global + [(l_size, l_scale)] * n_local
        self.n_global = n_global
        self.teacher = teacher.eval().to(memory_format=torch.channels_last)
        self.student = student.train().to(memory_format=torch.channels_last)
        self.mean = torch.tensor(teacher.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(teacher.std).view(1, 3, 1, 1)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=lr, weight_decay=weight_decay)
        self.t_temp, self.s_temp, self.clip = t_temp, s_temp, clip
        # what a user adds for bf16 on a CPU with native bf16: one autocast around the forward passes
        self.autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.gen = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(files), generator=self.gen)

    def load(self, i: int):
        """Decode one batch of JPEGs (every image the same size here: the demo's 112 px)."""
        import torchvision

        torch = self.torch
        n = len(self.files)
        idx = [int(self.order[(i * self.batch + k) % n]) for k in range(self.batch)]
        data = [torchvision.io.read_file(self.files[k]) for k in idx]
        imgs = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB)
        h, w = imgs[0].shape[1:]
        imgs = [im if im.shape[1:] == (h, w) else torchvision.transforms.v2.functional.resize(im, [h, w]) for im in imgs]
        return torch.stack(imgs)

    def crops(self, images):
        """Random resized crops (roi_align), flip, brightness / contrast / saturation jitter, normalise."""
        from torchvision.ops import roi_align

        torch, gen = self.torch, self.gen
        b, _, h, w = images.shape
        x = images.float() / 255
        out = []
        for size, (lo, hi) in self.views:
            area = lo + (hi - lo) * torch.rand(b, generator=gen)
            ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(b, generator=gen))
            cw = (torch.sqrt(area * ratio) * w).clamp(1, w)
            ch = (torch.sqrt(area / ratio) * h).clamp(1, h)
            x0 = torch.rand(b, generator=gen) * (w - cw)
            y0 = torch.rand(b, generator=gen) * (h - ch)
            boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
            v = roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
            flip = torch.rand(b, generator=gen) < 0.5
            v = torch.where(flip.view(-1, 1, 1, 1), v.flip(-1), v)
            jit = (torch.rand(b, generator=gen) < 0.8).float().view(-1, 1, 1, 1)
            f = 1 + jit * (torch.rand(3, b, generator=gen).view(3, b, 1, 1, 1) * 0.8 - 0.4) * torch.tensor(
                [1.0, 1.0, 0.5]).view(3, 1, 1, 1, 1)
            v = (v * f[0]).clamp(0, 1)
            mean = v.mean(dim=(1, 2, 3), keepdim=True)
            v = (f[1] * v + (1 - f[1]) * mean).clamp(0, 1)
            gray = (0.299 * v[:, :1] + 0.587 * v[:, 1:2] + 0.114 * v[:, 2:])
            v = (f[2] * v + (1 - f[2]) * gray).clamp(0, 1)
            out.append(((v - self.mean) / self.std).contiguous(memory_format=torch.channels_last))
        return out

    def step(self, crops) -> float:
        torch = self.torch
        import torch.nn.functional as F

        g = self.n_global
        with self.autocast():
            with torch.no_grad():
                t = self.teacher(torch.cat(crops[:g]))
            # Same-resolution views go through the backbone together (DINO's MultiCropWrapper does this).
            s = self.student([torch.cat(crops[:g]), *([torch.cat(crops[g:])] if len(crops) > g else [])])
        t_probs = F.softmax(t.float() / self.t_temp, dim=-1).chunk(g)
        s_logp = F.log_softmax(s.float() / self.s_temp, dim=-1).chunk(len(crops))
        pairs = [(i, v) for i in range(g) for v in range(len(crops)) if v == i or v >= g]  # RoB's same-view pairs
        loss = sum(-(t_probs[i] * s_logp[v]).sum(-1).mean() for i, v in pairs) / len(pairs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.clip)
        self.opt.step()
        return loss.item()

    def __call__(self, i: int) -> float:
        return self.step(self.crops(self.load(i)))


# ---------------------------------------------------------------- the benchmark


def _rate(seconds_per_step: float, batch: int) -> float:
    return batch / seconds_per_step


def no_overhead_rate(step_img_per_s: float, threads: int, cores: int, actor_ms_per_image: float,
                   worker_crops_img_per_s: float | None = None) -> float:
    """The end-to-end rate when the step (on `threads` threads) and the data actors' work per image
    share `cores` cores with no overhead, no idle core and no contention.

    Per image the step costs threads / step rate core-seconds (its threads held for its whole
    duration, as a spinning OpenMP team holds them), an actor actor_ms / 1000 (one thread), and
    with the crops in the worker (`worker_crops_img_per_s`, on the step's threads) they run in
    series with the step. The rate is cores over the core-seconds, and at most what the worker
    alone reaches (the step, plus its crops when it makes them)."""
    per_image = 1 / step_img_per_s + (1 / worker_crops_img_per_s if worker_crops_img_per_s else 0.0)
    core_s = threads * per_image + actor_ms_per_image / 1000
    return min(cores / core_s, 1 / per_image)


def rob_ray_end_to_end(cfg, windows: int, warmup_windows: int) -> dict[str, Any]:
    """The real training for (warm-up + timed) logging windows; the rate from its metrics.jsonl."""
    import ray

    from rob_ray.train.launch import fit

    every = cfg.run.log_every_steps
    steps = every * (windows + warmup_windows)
    with tempfile.TemporaryDirectory() as tmp:
        run = cfg.model_copy(deep=True)
        run.optim.max_steps = steps
        run.run.storage_path, run.run.name = tmp, "bench_pipeline"
        run.run.checkpoint_every_steps, run.run.checkpoint_every_epochs = 10**6, 10**6  # only the final one
        t0 = time.perf_counter()
        fit(run)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tmp) / "bench_pipeline" / "metrics.jsonl").read_text().splitlines()]
    ray.shutdown()
    global_batch = cfg.optim.batch_size * max(cfg.scaling.num_workers, 1)
    windows_ = [(r, r["step"] - prev["step"]) for prev, r in zip([{"step": 0}, *rows], rows)]  # (row, its steps)

    def window_s(r: dict[str, Any], n: int) -> float:
        return n * global_batch / r["img_per_s"]

    # The whole run: every step and every image's decoding (the actors decode ahead, mostly during the first
    # windows), less the first window's wait for the actors to start (what the plain loop's warm-up skips).
    images = steps * global_batch
    whole_s = sum(window_s(r, n) for r, n in windows_) - rows[0].get("time/data/wait", 0.0)
    timed = [(r, n) for r, n in windows_ if r["step"] - n >= every * warmup_windows]
    timed_steps = sum(n for _, n in timed)
    steady = timed_steps * global_batch / sum(window_s(r, n) for r, n in timed)
    timed = [r for r, _ in timed]
    stages = sorted({k for r in timed for k in r if k.startswith("time/")})
    stage_ms = {k.removeprefix("time/"): 1000 * sum(r.get(k, 0.0) for r in timed) / max(timed_steps, 1) for k in stages}
    return {"img_per_s": images / whole_s, "stage_ms_per_step": stage_ms,
            "steady_img_per_s": steady, "steps": steps, "timed_steps": timed_steps,
            "wall_s": wall, "window_rates": [round(r["img_per_s"], 1) for r, _ in windows_],
            "window_s": [window_s(r, n) for r, n in windows_],
            "start_wait_s": rows[0].get("time/data/wait", 0.0),
            "data_wait_frac": sum(r["data_wait_frac"] for r in timed) / max(len(timed), 1),
            "augment_s_per_step": sum(r.get("time/augment", 0.0) for r in timed) / max(timed_steps, 1)}


def in_process_env(environ: dict[str, str], omp_wait: str) -> dict[str, str]:
    """The environment of this process (the in-process rows): rob_ray's worker CPU settings, and with
    `omp_wait="default"` libgomp's own wait policy (spin, then sleep) instead of the worker's passive one.

    A hand-written script gets libgomp's default; rob_ray's Ray worker sleeps at once (WORKER_CPU_ENV),
    which a plain process pays for (measured in the README's Performance section). rob_ray's own run
    gets its worker settings either way (from its runtime_env)."""
    env = {**environ, **WORKER_CPU_ENV}
    if omp_wait == "default":
        for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            env.pop(key, None)
    return env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in a log file (as the CLI)
    env = in_process_env(dict(os.environ), args.omp_wait)
    if env != dict(os.environ):  # glibc and libgomp read these at start-up only
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch

    from rob_ray.cli import _resolve_paths
    from rob_ray.config import load_config
    from rob_ray.data import MultiCropMapper, SampleSchedule, build_policy, scan_images
    from rob_ray.data.views import ViewsBuilder
    from rob_ray.methods import Views, build_method, build_models, needs_pretrained_teacher
    from rob_ray.precision import cpu_computes_bf16, uses_bf16
    from rob_ray.train.compiled import prepare_teacher, teacher_mode
    from rob_ray.train.loop import build_optimizer
    from rob_ray.train.schedules import cosine_schedule
    from rob_ray.train.step import TrainStep
    from rob_ray.train.timing import StageClock, flops_per_image, matmul_flop_rate, time_calls

    cfg = _resolve_paths(load_config(args.config, args.overrides), REPO)
    table = scan_images(cfg.data.path, cfg.data.format, cfg.data.parquet_image_column, cfg.data.parquet_label_column,
                        cfg.data.max_images)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    a, b = cfg.augment, cfg.optim.batch_size
    policy = build_policy(cfg.augment)
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"machine": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
                              "torch": torch.__version__, "torch_threads": threads, "omp_wait": args.omp_wait,
                              "config": args.config, "overrides": args.overrides, "batch": b, "rows": rows,
                              "views": f"{a.num_global}x{a.global_size} + {a.num_local}x{a.local_size}"}

    def row(name: str, img_per_s: float, note: str = "", **extra: Any) -> dict[str, Any]:
        r = {"row": name, "img_per_s": img_per_s, "note": note, **extra}
        rows.append(r)
        print(f"  {name:<52} {img_per_s:>9.1f} img/s  {note}", flush=True)
        return r

    def models():
        torch.manual_seed(cfg.seed)
        return build_models(cfg)

    print(f"[bench] {cfg.teacher.kind} -> {cfg.student.arch}, {result['views']}, batch {b}, {threads} torch threads, "
          f"{len(table)} images", flush=True)

    # --- the in-process rows: rob_ray's step alone (3) and the hand-written loop (2), in alternating
    # blocks (a shared machine's load then falls on both alike), before and after the Ray runs
    teacher, student = models()
    method = build_method(cfg.method, teacher, student)
    teacher, student = teacher.to(memory_format=torch.channels_last), student.to(memory_format=torch.channels_last)
    lr = cosine_schedule(cfg.optim.lr * b / 256, cfg.optim.min_lr, 10**6, 100)
    # Both in-process rows compute in the run's precision, resolved as rob_ray's CPU worker resolves it.
    bf16 = uses_bf16(cfg.run.precision, on_gpu=False)
    result["precision"], result["cpu_native_bf16"] = ("bf16" if bf16 else "fp32"), cpu_computes_bf16()
    gen = torch.Generator().manual_seed(0)

    def crops(n: int, s: int) -> torch.Tensor:
        return torch.randn(n * b, 3, s, s, generator=gen).contiguous(memory_format=torch.channels_last)

    views = Views(crops(a.num_global, a.global_size), crops(a.num_local, a.local_size) if a.num_local else None,
                  torch.full((b,), -1), b, a.num_global)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    # The teacher as rob_ray's CPU worker runs it (run.compile / run.compile_teacher: compiled frozen by default)
    mode = teacher_mode(cfg.run.compile_teacher, cfg.run.compile, is_cuda=False,
                        frozen_teacher=needs_pretrained_teacher(cfg.method)) if method.calls_run_teacher() else "eager"
    t0 = time.perf_counter()
    run_teacher, note = prepare_teacher(teacher, mode, views.globals_, autocast)
    result["teacher_run"], result["teacher_compile_s"] = ("eager" if note else mode), time.perf_counter() - t0
    print(f"[bench] teacher: {result['teacher_run']} ({result['teacher_compile_s']:.1f} s){' - ' + note if note else ''}",
          flush=True)
    step_clock = StageClock(cpu)  # the stages the worker's metrics time too, to set them side by side
    step = TrainStep(method, student, build_optimizer(cfg, student), lr=lr, weight_decay=cfg.optim.weight_decay,
                     clip_grad=cfg.optim.clip_grad, run_teacher=run_teacher, autocast=autocast if bf16 else None,
                     clock=step_clock)
    student.train()

    def plain_loop(bf16: bool) -> PlainLoop:
        return PlainLoop([table.paths[i] for i in range(len(table))], *models(), batch=b, n_global=a.num_global,
                         n_local=a.num_local, g_size=a.global_size, l_size=a.local_size, g_scale=a.global_scale,
                         l_scale=a.local_scale, lr=cfg.optim.lr * b / 256, weight_decay=cfg.optim.weight_decay,
                         t_temp=getattr(cfg.method, "teacher_temp", 0.07),
                         s_temp=getattr(cfg.method, "student_temp", 0.1), clip=cfg.optim.clip_grad, bf16=bf16)

    plain = plain_loop(bf16)
    timed = {"step": lambda i: step(views, i), "plain": plain}
    if run_teacher is not teacher:  # the same step with the eager teacher (run.compile_teacher=false), alternated
        eager_step = TrainStep(method, student, step.optimizer, lr=lr, weight_decay=cfg.optim.weight_decay,
                               clip_grad=cfg.optim.clip_grad, autocast=autocast if bf16 else None)
        timed["step_eager"] = lambda i: eager_step(views, i)
    if bf16:  # what a script gets without asking for bf16: the baseline a user compares rob_ray's default with
        timed["plain_fp32"] = plain_loop(False)
    counter = dict.fromkeys(timed, 0)
    spent = {name: [0.0, 0.0] for name in timed}  # seconds before / after the Ray runs

    def alternate(phase: int) -> None:
        block = max(1, min(5, args.steps // 4))
        for _ in range(max(1, args.steps // block)):
            for name, fn in timed.items():
                t, _ = time_calls(fn, block, 0, cpu)
                spent[name][phase] += t * block
                counter[name] += block

    for i in range(args.warmup):
        for fn in timed.values():
            fn(i)
    step_clock.collect()  # the warm-up's stages out: the clock then holds the timed blocks' only
    alternate(0)
    # The two placements' crop work alone: batched in the worker (ViewsBuilder on a decoded batch), and
    # in one data actor (read + decode + shrink + draw + the batch's crops, one thread).
    placed = {k: build_policy(cfg.augment.model_copy(update={"crops_on": k})) for k in ("worker", "data_actors")}
    mapper = MultiCropMapper(table, placed["worker"], SampleSchedule(len(table), 1, b, cfg.optim.epochs, cfg.seed), 0)
    batches = list(mapper.iter_local(0, 4))
    build = ViewsBuilder(placed["worker"], teacher.mean, teacher.std, cpu, cfg.run.channels_last)
    t_aug, _ = time_calls(lambda i: build(batches[i % len(batches)]), max(4, args.steps // 3), 1, cpu)
    t_plain_aug, _ = time_calls(lambda i: plain.crops(plain.load(i)), max(4, args.steps // 3), 1, cpu)
    from rob_ray.data.mapper import measure_decode_ms

    other = "data_actors" if policy.crops_on == "worker" else "worker"
    per_image_ms = measure_decode_ms(table, placed["data_actors"], n=16)
    # What the default placement's actors do per image (decode only when the worker crops).
    actor_ms = per_image_ms if policy.crops_on == "data_actors" else measure_decode_ms(table, placed["worker"], n=16)
    # How much of the CPU's arithmetic the step uses: its nominal FLOPs per image (FlopCounterMode) at the
    # step-alone rate, against a large matrix product on the same threads (measured after the Ray runs).
    result["step_gflop_per_image"] = flops_per_image(method, teacher, student, policy, cpu) / 1e9

    # --- (1) rob_ray end to end
    e2e = other_e2e = capped_e2e = None
    variants: list[tuple[str, dict[str, Any]]] = []
    if not args.no_ray:
        print("[bench] rob_ray end to end (Ray Data + Ray Train)", flush=True)
        e2e = rob_ray_end_to_end(cfg, args.windows, args.warmup_windows)
        for overrides in args.variant:  # the same run with some settings changed, just after the default one
            print(f"[bench] rob_ray end to end, {overrides}", flush=True)
            alt = _resolve_paths(load_config(args.config, [*args.overrides, *overrides.split()]), REPO)
            variants.append((overrides, rob_ray_end_to_end(alt, args.windows, args.warmup_windows)))
        if args.other_placement:  # the measured reason for the default placement
            print(f"[bench] rob_ray end to end, augment.crops_on={other}", flush=True)
            alt = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"crops_on": other})})
            other_e2e = rob_ray_end_to_end(alt, args.windows, args.warmup_windows)
        if args.capped:  # a dataset larger than the object-store budget: the actors work at the step's pace
            print(f"[bench] rob_ray end to end, data.max_batches_ahead={args.capped}", flush=True)
            capped = cfg.model_copy(update={"data": cfg.data.model_copy(update={"max_batches_ahead": args.capped})})
            capped_e2e = rob_ray_end_to_end(capped, args.windows, args.warmup_windows)
        torch.set_num_threads(threads)
        alternate(1)
    result["matmul_gflop_per_s"] = matmul_flop_rate(cpu) / 1e9

    def rate(name: str) -> tuple[float, str]:
        n_phase = counter[name] // (2 if spent[name][1] else 1)
        parts = [f"{_rate(t / n_phase, b):.1f}" for t in spent[name] if t]
        return counter[name] * b / sum(spent[name]), ("before / after the Ray runs: " + " / ".join(parts)
                                                      if len(parts) > 1 else "")

    step_row = row("rob_ray step alone (TrainStep, ready-made views)", *rate("step"))
    alone = {k: 1000 * v / counter["step"] for k, v in step_clock.collect().items()}
    result["stage_ms_per_step"] = {"step_alone": {**alone, "step": 1000 * b / step_row["img_per_s"]}}
    if "step_eager" in timed:
        eager_row = row("rob_ray step alone, eager teacher (run.compile_teacher=false)", *rate("step_eager"))
        checks_step = {"step_alone_vs_eager_teacher_step": step_row["img_per_s"] / eager_row["img_per_s"]}
    else:
        checks_step = {}
    plain_row = row("plain PyTorch loop, end to end (hand-written)", *rate("plain"))
    fp32_row = row("plain PyTorch loop in fp32 (a script's default), end to end", *rate("plain_fp32")) if bf16 else None
    row("rob_ray batched crops alone (ViewsBuilder, crops_on=worker)", _rate(t_aug, b), "decoded batch in")
    row("plain loop: decode + crops alone", _rate(t_plain_aug, b))
    row("one data actor, crops_on=data_actors: decode + batched crops", 1000 / per_image_ms, "1 thread")
    result["step_gflop_per_s"] = step_row["img_per_s"] * result["step_gflop_per_image"]
    cores = os.cpu_count() or threads
    ideal_row = row("no-overhead rate: the step's and the data actors' CPU time on every core",
                    no_overhead_rate(step_row["img_per_s"], threads, cores, actor_ms,
                                   _rate(t_aug, b) if policy.crops_on == "worker" else None),
                    f"{cores} cores; actors {actor_ms:.2f} core-ms per image (crops_on={policy.crops_on})")
    checks: dict[str, Any] = dict(checks_step)
    checks["no_overhead_vs_plain_loop"] = ideal_row["img_per_s"] / plain_row["img_per_s"]
    checks["no_overhead_vs_step_alone"] = ideal_row["img_per_s"] / step_row["img_per_s"]
    e2e_row = None
    if e2e is not None:
        r = e2e_row = row("rob_ray end to end (Ray Data + Ray Train, its metrics)", e2e.pop("img_per_s"),
                f"crops_on={policy.crops_on} (the default here), all {e2e['steps']} steps less "
                f"{e2e['start_wait_s']:.1f} s of actor start; windows {e2e['window_rates']}; after "
                f"{args.warmup_windows} windows {e2e['steady_img_per_s']:.1f}", crops_on=policy.crops_on, **e2e)
        checks["e2e_vs_plain_loop"] = r["img_per_s"] / plain_row["img_per_s"]
        checks["e2e_vs_step_alone"] = r["img_per_s"] / step_row["img_per_s"]
        checks["e2e_vs_no_overhead"] = r["img_per_s"] / ideal_row["img_per_s"]
        result["stage_ms_per_step"]["rob_ray_worker"] = r["stage_ms_per_step"]
        if fp32_row is not None:
            checks["e2e_vs_fp32_plain_loop"] = r["img_per_s"] / fp32_row["img_per_s"]
    for overrides, res in variants:
        r = row(f"rob_ray end to end, {overrides}", res.pop("img_per_s"), f"windows {res['window_rates']}; after "
                f"{args.warmup_windows} windows {res['steady_img_per_s']:.1f}", overrides=overrides, **res)
        if e2e_row is not None:
            checks[f"e2e_vs_variant[{overrides}]"] = e2e_row["img_per_s"] / r["img_per_s"]
    if other_e2e is not None:
        row(f"rob_ray end to end, augment.crops_on={other}", other_e2e.pop("img_per_s"),
            f"windows {other_e2e['window_rates']}", **other_e2e)
    if capped_e2e is not None:
        r = row(f"rob_ray end to end, data.max_batches_ahead={args.capped}", capped_e2e.pop("img_per_s"),
                f"windows {capped_e2e['window_rates']}", **capped_e2e)
        checks["capped_e2e_vs_plain_loop"] = r["img_per_s"] / plain_row["img_per_s"]
    checks["step_alone_vs_plain_loop"] = step_row["img_per_s"] / plain_row["img_per_s"]
    result["checks"] = checks
    print_table(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return result


def print_table(result: dict[str, Any]) -> None:
    rows = {r["row"]: r for r in result["rows"]}
    plain = next(r for r in result["rows"] if r["row"].startswith("plain PyTorch loop"))["img_per_s"]
    step = next(r for r in result["rows"] if r["row"].startswith("rob_ray step alone"))["img_per_s"]
    print(f"\n| row | img/s | x hand-written loop | x rob_ray step alone |   ({result['cpu_cores']} cores, "
          f"{result['torch_threads']} torch threads, {result.get('precision', 'fp32')}, OpenMP wait {result['omp_wait']}, "
          f"rob_ray's teacher {result.get('teacher_run', 'eager')}, "
          f"torch {result['torch']}, "
          f"{result['views']}, batch {result['batch']})")
    print("|---|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['img_per_s']:.1f} | {r['img_per_s'] / plain:.2f} | {r['img_per_s'] / step:.2f} |")
    stages = result.get("stage_ms_per_step", {})
    if "rob_ray_worker" in stages:  # the same stages, timed the same way, in a plain process and in the worker
        alone, worker = stages["step_alone"], stages["rob_ray_worker"]
        print("\n| stage, ms per step | step alone | rob_ray's worker (after the warm-up windows) |\n|---|---:|---:|")
        for k in [*alone, *(k for k in worker if k not in alone)]:
            a, w = alone.get(k), worker.get(k)
            print(f"| {k} | {'' if a is None else f'{a:.1f}'} | {'' if w is None else f'{w:.1f}'} |")
    if "step_gflop_per_s" in result:
        print(f"the step: {result['step_gflop_per_image']:.2f} GFLOP per image (nominal), {result['step_gflop_per_s']:.1f} "
              f"GFLOP/s at the step-alone rate; a {2048}x{2048} matrix product on the same threads: "
              f"{result['matmul_gflop_per_s']:.1f} GFLOP/s")
    print("checks:", json.dumps({k: round(v, 3) for k, v in result["checks"].items()}), flush=True)


if __name__ == "__main__":
    main()
