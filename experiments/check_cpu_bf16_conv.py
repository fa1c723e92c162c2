"""Does this torch build's CPU bf16 convolution backward return garbage for a 1-pixel input?

A student's convolution that sees a 1-pixel input at one crop size (and more pixels at another) is the case
`run.precision=bf16` refuses on CPU workers (`rob_ray/checks/preflight.py: check_cpu_bf16`). This times
nothing: it runs one 3x3 stride-2 convolution on a 2x2 and a 1x1 input in one graph under CPU bf16 autocast,
backward, and counts the passes whose weight gradient is not finite (the gradient of a sum is finite
whatever the weights). Measured with torch 2.14.1 on an AMD EPYC with AVX512-BF16 (2026-11-29), 1 thread:
from 1 to 181 of 300 passes in bf16 (and up to 68 of 200 channels_last) over runs of this check and its
variants; in fp32 none. The garbage depends on what the allocator hands out, so counts vary by run: a
count of 0 clears nothing, any other count shows the bug.

    python experiments/check_cpu_bf16_conv.py            # 300 passes, bf16 and fp32
"""

from __future__ import annotations

import argparse

import torch


def bad_passes(n: int, bf16: bool, channels_last: bool = False, seed: int = 0) -> int:
    """Backward passes (of `n`) whose weight gradient has a NaN or an inf."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(192, 96, 3, stride=2, padding=1, bias=False)
    xs = [torch.randn(16, 192, 2, 2), torch.randn(32, 192, 1, 1)]  # a global and a local crop's late feature maps
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    bad = 0
    for _ in range(n):
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            ys = [conv(x) for x in xs]
        sum(y.float().sum() for y in ys).backward()
        bad += int(not torch.isfinite(conv.weight.grad).all())
    return bad


def main(argv: list[str] | None = None) -> dict[str, int]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {}
    for name, bf16, cl in (("bf16", True, False), ("bf16 channels_last", True, True), ("fp32", False, False)):
        out[name] = bad_passes(args.passes, bf16, cl)
        print(f"{name:<20} {out[name]:>5} of {args.passes} backward passes with non-finite weight gradients "
              f"(torch {torch.__version__}, {args.threads} thread(s))", flush=True)
    return out


if __name__ == "__main__":
    main()
