"""Benchmark: rob_ray.checks.memory.estimate_memory vs the peak CUDA memory of one real RoB-DINO training step.

Prints a table per (teacher, student, crops, batch): estimated GiB (without the CUDA-context term,
which torch's allocator does not count) and `torch.cuda.max_memory_allocated` after one bf16 step with AdamW.
Needs a GPU; imports no pydantic/Ray (runs on a bare torch + timm image): `python experiments/bench_memory_estimate.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch

from rob_ray.checks.memory import CUDA_OVERHEAD_GIB, estimate_memory
from rob_ray.losses.dino import DinoLoss
from rob_ray.models.heads import DINOHead
from rob_ray.models.students import Student, feature_width
from rob_ray.models.teachers.base import Teacher

CASES = [  # teacher arch, K, student arch, global, local, n_local, batch
    ("vit_base_patch16_224", 65536, "resnet18", 224, 96, 10, 64),
    ("vit_base_patch16_224", 65536, "vit_small_patch16_224", 224, 96, 10, 64),
    ("resnet50", 60000, "resnet50", 224, 96, 6, 32),
    ("vit_small_patch16_224", 65536, "mobilenetv3_small_100", 160, 64, 6, 128),
]


def build(t_arch, k, s_arch):
    kw = lambda a: {"dynamic_img_size": True} if "vit" in a else {}  # noqa: E731
    tb = timm.create_model(t_arch, num_classes=0, **kw(t_arch))
    teacher = Teacher(tb, DINOHead(tb.num_features, k), num_prototypes=k, embed_dim=tb.num_features, name=t_arch)
    sb = timm.create_model(s_arch, num_classes=0, **kw(s_arch))
    student = Student(sb, DINOHead(feature_width(sb, "pre_logits"), k))
    return teacher, student


def main() -> None:
    dev = torch.device("cuda")
    print("| teacher | student | crops | batch | estimated GiB | measured peak GiB | est / measured |")
    print("|---|---|---|---:|---:|---:|---:|")
    for t_arch, k, s_arch, gs, ls, nl, b in CASES:
        teacher, student = build(t_arch, k, s_arch)
        est = estimate_memory(teacher, student, global_size=gs, local_size=ls, num_global=2, num_local=nl,
                              batch_size=b, num_prototypes=k, bf16=True)
        teacher, student = teacher.to(dev), student.to(dev).train()
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)
        loss_fn = DinoLoss(k).to(dev)
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):  # the second step has AdamW state allocated
            g = torch.randn(2 * b, 3, gs, gs, device=dev)
            lo = torch.randn(nl * b, 3, ls, ls, device=dev)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                with torch.no_grad():
                    t = teacher(g)
                s = student([g, lo])
                loss = loss_fn(s, t, num_teacher_views=2, num_global=2)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() / 1024**3
        e = est["total"] - CUDA_OVERHEAD_GIB
        print(f"| {t_arch} (K={k}) | {s_arch} | 2x{gs}+{nl}x{ls} | {b} | {e:.2f} | {measured:.2f} | {e / measured:.2f} |",
              flush=True)
        del teacher, student, opt, loss_fn
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
