"""What the training worker's OpenMP wait policy costs on this machine: one table, CPU.

rob_ray's Ray workers run torch's OpenMP threads with `OMP_WAIT_POLICY=PASSIVE` (`WORKER_CPU_ENV`):
a thread sleeps as soon as a parallel region ends, so the data actors and Ray's daemons that share
its cores get them at once. A hand-written script gets libgomp's default instead: spin (~300k
iterations), then sleep. The price of sleeping is paid at the start of every parallel region, in
waking the other threads; on a VM whose idle vCPUs halt, that wake-up is slow. This benchmark
measures, per policy, each in a fresh process (libgomp reads its settings at start-up only):

  - one parallel region: `torch.add` on 2**16 floats with every torch thread, in µs per call (the
    same op on 1 thread is printed beside it: the region's work without any wake-up);
  - rob_ray's step alone (`TrainStep`, what the loop runs, on ready-made views of the config's
    shapes), in img/s.

Policies run in alternating rounds (a shared machine's drift then falls on all alike).

    python experiments/bench_omp_wait.py                                # the demo config, 2 rounds
    python experiments/bench_omp_wait.py --policies passive,default,spin:3000,spin:30000
    python experiments/bench_omp_wait.py --smoke --out /tmp/w.json      # tiny settings, a CI test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rob_ray.train.launch import WORKER_CPU_ENV  # noqa: E402  (imports neither torch nor Ray)

OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
SMOKE_OVERRIDES = ["student.arch=test_resnet", "student.head.hidden_dim=64", "student.head.bottleneck_dim=32",
                   "augment.global_size=32", "augment.local_size=16", "augment.num_local=2", "optim.batch_size=8"]


def policy_env(environ: dict[str, str], policy: str) -> dict[str, str]:
    """The environment of one policy's process: rob_ray's worker allocator settings, and the wait policy
    `passive` (rob_ray's worker), `default` (libgomp's own: what a script gets) or `spin:N`
    (GOMP_SPINCOUNT=N: spin N iterations, then sleep)."""
    env = {k: v for k, v in environ.items() if k not in OMP_KEYS}
    env.update({k: v for k, v in WORKER_CPU_ENV.items() if k not in OMP_KEYS})
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy.startswith("spin:") and policy[5:].isdigit():
        env["GOMP_SPINCOUNT"] = policy[5:]
    elif policy != "default":
        raise ValueError(f"unknown policy '{policy}' (passive, default or spin:N)")
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "experiments" / "configs" / "demo.yaml"))
    ap.add_argument("--policies", default="passive,default,spin:3000", help="comma-separated: passive, default, spin:N")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds over the policies")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per process")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    ap.add_argument("--regions", type=int, default=20000, help="timed parallel regions per process")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings (CI)")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one policy's measurement, in its process
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.batch_size=32")
    args = ap.parse_args(argv)
    if args.smoke:
        args.overrides = [*SMOKE_OVERRIDES, *args.overrides]
        args.rounds, args.steps, args.warmup, args.regions = 1, 2, 1, 200
    return args


def region_us(threads: int, calls: int) -> float:
    """µs per `torch.add(x, 1, out=y)` on 2**16 floats with `threads` threads (one parallel region each)."""
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(1 << 16)
    y = torch.empty_like(x)
    for _ in range(min(calls, 200)):
        torch.add(x, 1, out=y)
    t0 = time.perf_counter()
    for _ in range(calls):
        torch.add(x, 1, out=y)
    return (time.perf_counter() - t0) / calls * 1e6


def step_img_per_s(cfg: Any, threads: int, steps: int, warmup: int) -> float:
    """rob_ray's step alone (`TrainStep`, built as the loop builds it) on random views of the config's shapes."""
    import torch

    from rob_ray.methods import Views, build_method, build_models
    from rob_ray.train.loop import build_optimizer
    from rob_ray.train.step import TrainStep
    from rob_ray.train.timing import time_calls

    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    teacher, student = build_models(cfg)
    method = build_method(cfg.method, teacher, student)
    fmt = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    teacher, student = teacher.to(memory_format=fmt), student.to(memory_format=fmt)
    a, b = cfg.augment, cfg.optim.batch_size
    gen = torch.Generator().manual_seed(0)

    def crops(n: int, s: int) -> torch.Tensor:
        return torch.randn(n * b, 3, s, s, generator=gen).contiguous(memory_format=fmt)

    views = Views(crops(a.num_global, a.global_size), crops(a.num_local, a.local_size) if a.num_local else None,
                  torch.full((b,), -1), b, a.num_global)
    student.train()
    step = TrainStep(method, student, build_optimizer(cfg, student), lr=1e-4, weight_decay=cfg.optim.weight_decay,
                     clip_grad=cfg.optim.clip_grad)
    seconds, _ = time_calls(lambda i: step(views, i), steps, warmup, torch.device("cpu"))
    return b / seconds


def child(args: argparse.Namespace) -> dict[str, Any]:
    from rob_ray.cli import _resolve_paths
    from rob_ray.config import load_config

    cfg = _resolve_paths(load_config(args.config, args.overrides), REPO)
    threads = args.threads or os.cpu_count() or 1
    # Regions first with every thread, then the 1-thread floor (set_num_threads(1) parks the pool).
    many = region_us(threads, args.regions)
    one = region_us(1, args.regions)
    return {"policy": args.child, "region_us": many, "one_thread_us": one,
            "step_img_per_s": step_img_per_s(cfg, threads, args.steps, args.warmup), "torch_threads": threads}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return {}
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for p in policies:
        policy_env({}, p)  # an unknown policy fails here, before any process starts
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in policies}
    # The child gets the settings as resolved here (the smoke overrides included), not --smoke again.
    settings = ["--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup),
                "--regions", str(args.regions), *(["--threads", str(args.threads)] if args.threads else [])]
    for r in range(args.rounds):
        for p in policies:
            cmd = [sys.executable, str(Path(__file__).resolve()), *settings, "--child", p, *args.overrides]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=policy_env(dict(os.environ), p))
            if proc.returncode != 0:
                raise SystemExit(f"policy {p} failed:\n{proc.stderr[-3000:]}")
            runs[p].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            m = runs[p][-1]
            print(f"  round {r + 1} {p:<12} region {m['region_us']:7.1f} µs   step {m['step_img_per_s']:7.1f} img/s",
                  flush=True)
    rows = []
    for p in policies:
        rs = runs[p]
        rows.append({"policy": p, "region_us": sum(m["region_us"] for m in rs) / len(rs),
                     "one_thread_us": sum(m["one_thread_us"] for m in rs) / len(rs),
                     "step_img_per_s": sum(m["step_img_per_s"] for m in rs) / len(rs),
                     "step_rounds": [round(m["step_img_per_s"], 1) for m in rs]})
    base = rows[0]["step_img_per_s"]
    for row in rows:
        row["step_vs_first"] = row["step_img_per_s"] / base
    threads = runs[policies[0]][0]["torch_threads"]
    result = {"machine": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
              "torch_threads": threads, "config": args.config, "overrides": args.overrides, "rounds": args.rounds,
              "rows": rows}
    print_table(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def print_table(result: dict[str, Any]) -> None:
    first = result["rows"][0]["policy"]
    print(f"\n| OpenMP wait | µs per parallel region ({result['torch_threads']} threads) | same op, 1 thread | "
          f"step alone, img/s | × {first} |   ({result['cpu_cores']} cores, mean of {result['rounds']} rounds)")
    print("|---|---:|---:|---:|---:|")
    for r in result["rows"]:
        print(f"| {r['policy']} | {r['region_us']:.1f} | {r['one_thread_us']:.1f} | {r['step_img_per_s']:.1f} "
              f"({' / '.join(map(str, r['step_rounds']))}) | {r['step_vs_first']:.2f} |")


if __name__ == "__main__":
    main()
