"""The step and its timing: the carved-out `TrainStep` (schedules, clipping, guard, unreadable rows),
the loop with crops made in the worker on CPU tensors, stage accounting, FLOP counting against a hand
count, and bf16 / compiled losses against eager fp32."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

from rob_ray.config import AugmentConfig, load_config
from rob_ray.data import CropPolicy, MultiCropMapper, SampleSchedule, build_policy, scan_images
from rob_ray.data.mapper import fit_image
from rob_ray.losses import DinoLoss
from rob_ray.methods import Views
from rob_ray.methods.dino import DinoMethod
from rob_ray.models import DINOHead, Student
from rob_ray.models.teachers import Teacher
from rob_ray.train import LocalContext
from rob_ray.train.loop import train_loop
from rob_ray.train.step import TrainStep, make_optimizer, param_groups
from rob_ray.train.timing import StageClock, flops_per_image, matmul_flop_rate, mfu
from tests.conftest import tiny_overrides


def test_mapper_ships_fitted_images_and_draws_for_the_worker(small_folder):
    table = scan_images(small_folder)
    policy = CropPolicy(global_size=32, local_size=16, num_local=2, crops_on="worker", image_size=64)
    batch = next(MultiCropMapper(table, policy, SampleSchedule(len(table), 1, 4, 1), 0).iter_local(0, 1))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == np.uint8
    assert batch["draws"].shape == (4, 4, 18) and "global" not in batch and batch["valid"].all()
    for img, (h, w), d in zip(batch["image"], batch["size"], batch["draws"]):
        assert max(h, w) == 64 and img[:, h:, :].sum() == 0 and img[:, :, w:].sum() == 0
        assert (d[:, 0] + d[:, 2] <= h).all() and (d[:, 1] + d[:, 3] <= w).all()  # boxes inside the shrunk image
    small = np.zeros((30, 50, 3), dtype=np.uint8)
    assert fit_image(small, 64).shape == (3, 30, 50)  # never enlarged
    assert fit_image(np.zeros((300, 100, 3), dtype=np.uint8), 60).shape == (3, 60, 20)


def test_loop_with_crops_in_the_worker_on_cpu_reports_stages(small_folder, tmp_path):
    table = scan_images(small_folder)
    cfg = load_config(None, tiny_overrides(small_folder, tmp_path, "g") + [
        "augment.crops_on=worker", "augment.image_size=64", "optim.max_steps=3", "run.peak_tflops=1.0"])
    metrics = train_loop(cfg, LocalContext(table, tmp_path / "g"), len(table))
    assert metrics["step"] == 3 and np.isfinite(metrics["loss"])
    rows = [json.loads(line) for line in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    for key in ("time/augment", "time/teacher/forward", "time/student/forward_backward", "time/optimizer",
                "time/data/wait", "flops_per_image", "mfu"):
        assert key in rows[0], key  # step 1's window also made step 2's views (one step ahead)
    assert rows[-1]["flops_per_image"] > 0
    assert rows[-1]["mfu"] == pytest.approx(rows[-1]["img_per_s"] * rows[-1]["flops_per_image"] / 1e12)


class _Flat(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_flops_per_image_matches_a_hand_count():
    g, loc, sg, sl, d, k = 2, 3, 8, 4, 16, 32
    policy = CropPolicy(num_global=g, num_local=loc, global_size=sg, local_size=sl)
    # Global and local crops must share one backbone: pool to a fixed 4x4 first.
    pool = nn.AdaptiveAvgPool2d(4)
    teacher = Teacher(nn.Sequential(pool, _Flat(48, d)), nn.Linear(d, k, bias=False), num_prototypes=k, embed_dim=d)
    student = Student(nn.Sequential(nn.AdaptiveAvgPool2d(4), _Flat(48, d)), nn.Linear(d, k, bias=False))
    method = DinoMethod(teacher, student, DinoLoss(k))
    got = flops_per_image(method, teacher, student, policy, torch.device("cpu"))
    mm = lambda m, n, p: 2 * m * n * p  # noqa: E731 - FLOPs of an (m x n) @ (n x p) product
    teacher_fwd = g * (mm(1, 48, d) + mm(1, d, k))
    views = g + loc
    # Student: forward both layers; backward: weight grads of both + input grad of the head only.
    student = views * (mm(1, 48, d) + mm(1, d, k)) + views * (mm(1, 48, d) + 2 * mm(1, d, k))
    assert got == teacher_fwd + student
    assert mfu(1000.0, got, 1.0) == pytest.approx(1000.0 * got / 1e12) and mfu(1.0, got, None) is None


def test_matmul_flop_rate_is_the_best_timed_product(monkeypatch):
    """2 n^3 FLOPs over the fastest timed product; the two untimed ones are not counted even when faster."""
    import rob_ray.train.timing as timing

    durations = iter([0.5, 0.5, 4.0, 2.0, 3.0])  # 2 untimed, then 3 timed: the best timed one is 2 s
    now = [0.0]
    ticks = []

    class Clock:
        @staticmethod
        def perf_counter() -> float:
            ticks.append(now[0])
            if len(ticks) % 2:  # a start: the product then "takes" the next duration
                now[0] += next(durations)
                return ticks[-1]
            return now[0]

    monkeypatch.setattr(timing, "time", Clock)
    assert matmul_flop_rate(torch.device("cpu"), n=8, calls=3) == pytest.approx(2 * 8**3 / 2.0)
    assert len(ticks) == 10


def test_stage_clock_on_cpu():
    clock = StageClock(torch.device("cpu"))
    clock.start("a")
    torch.ones(100).sum()
    clock.stop("a")
    clock.add("b", 0.25)
    clock.add("b", 0.5)
    out = clock.collect()
    assert out["b"] == 0.75 and out["a"] >= 0 and clock.collect() == {}


def _tiny_setup():
    torch.manual_seed(0)
    teacher = Teacher(timm.create_model("test_resnet", num_classes=0), DINOHead(timm.create_model(
        "test_resnet", num_classes=0).num_features, 64, hidden_dim=32, bottleneck_dim=16), num_prototypes=64, embed_dim=1)
    backbone = timm.create_model("test_resnet", num_classes=0)
    student = Student(backbone, DINOHead(backbone.num_features, 64, hidden_dim=32, bottleneck_dim=16))
    method = DinoMethod(teacher, student, DinoLoss(64))
    gen = torch.Generator().manual_seed(1)
    views = Views(torch.randn(2 * 4, 3, 32, 32, generator=gen), torch.randn(2 * 4, 3, 16, 16, generator=gen),
                  torch.zeros(4, dtype=torch.long), 4, 2)
    return teacher, student, method, views


def test_bf16_autocast_loss_matches_fp32_on_a_fixed_batch():
    teacher, student, method, views = _tiny_setup()
    ref = method(views, teacher, student, 0).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = method(views, teacher, student, 0).loss
    assert torch.isfinite(low) and abs(low.item() - ref.item()) / ref.item() < 3e-2


def test_compiled_step_matches_eager_loss_and_grads():
    """torch.compile's wiring (graph capture + AOT autograd) with backend aot_eager: inductor's
    CPU code generation would need a C++ compiler and minutes here; the GPU check runs inductor."""
    teacher, student, method, views = _tiny_setup()
    ref = method(views, teacher, student, 0).loss
    ref.backward()
    ref_grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    student.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    ct = torch.compile(teacher, backend="aot_eager", dynamic=False)
    cs = torch.compile(student, backend="aot_eager", dynamic=False)
    out = method(views, ct, cs, 0).loss
    out.backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    got = [p.grad for p in student.parameters() if p.grad is not None]
    assert len(got) == len(ref_grads)
    for a, b in zip(got, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_build_policy_carries_placement_fields_and_old_names_migrate():
    cfg = load_config(None, ["augment.crops_on=data_actors", "augment.image_size=128"])
    p = build_policy(cfg.augment)
    assert p.crops_on == "data_actors" and p.image_size == 128
    # auto: the measured faster placement for the workers' device, written into the resolved config
    assert load_config(None, []).augment.crops_on == "data_actors"
    assert load_config(None, ["scaling.use_gpu=true"]).augment.crops_on == "worker"
    assert load_config(None, ["scaling.use_gpu=true", "augment.crops_on=data_actors"]).augment.crops_on == "data_actors"
    assert build_policy(AugmentConfig()).crops_on == "data_actors"
    assert build_policy(AugmentConfig(), use_gpu=True).crops_on == "worker"
    with pytest.warns(FutureWarning, match="augment.device=gpu is now augment.crops_on=worker"):
        old = load_config(None, ["augment.device=gpu", "augment.gpu_image_size=96"])  # an old run's config.yaml
    assert old.augment.crops_on == "worker" and old.augment.image_size == 96
    with pytest.warns(FutureWarning):
        assert load_config(None, ["augment.device=cpu"]).augment.crops_on == "data_actors"
    from rob_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"contradicts augment\.crops_on"):
        load_config(None, ["augment.device=cpu", "augment.crops_on=worker"])


def test_allreduce_hook_averages_and_is_timed(tmp_path):
    """A one-process gloo group: DDP with the timing hook gives the plain gradients (averaged over
    one rank) and records the bucket all-reduce time."""
    import torch.distributed as dist

    from rob_ray.train.timing import allreduce_timing_hook

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = nn.Linear(5, 3)
        ref = copy.deepcopy(net)
        ddp = nn.parallel.DistributedDataParallel(net)
        clock = StageClock(torch.device("cpu"))
        ddp.register_comm_hook(None, allreduce_timing_hook(clock))
        x = torch.randn(4, 5)
        ddp(x).pow(2).sum().backward()
        ref(x).pow(2).sum().backward()
        for a, b in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(a.grad, b.grad)
        assert clock.collect().get("allreduce", -1) >= 0
    finally:
        dist.destroy_process_group()


def _linear_pair(k: int = 16, d: int = 8, seed: int = 0):
    """Teacher and student without batch statistics (no BatchNorm): rows of a batch only meet in the loss."""
    torch.manual_seed(seed)
    teacher = Teacher(nn.Sequential(nn.AdaptiveAvgPool2d(4), _Flat(48, d)), nn.Linear(d, k, bias=False),
                      num_prototypes=k, embed_dim=d)
    student = Student(nn.Sequential(nn.AdaptiveAvgPool2d(4), _Flat(48, d)), nn.Linear(d, k))
    return teacher, student


def _views(crops: list[torch.Tensor], rows: list[int], g: int) -> Views:
    """View-major Views of images `rows` from per-view crops (V, N, 3, S, S)."""
    sel = [c[rows] for c in crops]
    return Views(torch.cat(sel[:g]), torch.cat(sel[g:]), torch.full((len(rows),), -1), len(rows), g)


def test_unreadable_rows_keep_the_shape_and_contribute_nothing():
    """A 4-image batch whose second image is unreadable (its row filled with garbage, weight 0) makes
    the same update as the 3 readable images alone."""
    gen = torch.Generator().manual_seed(0)
    crops = [torch.randn(4, 3, 16, 16, generator=gen) for _ in range(2)] + [torch.randn(4, 3, 8, 8, generator=gen)
                                                                            for _ in range(3)]
    crops_bad = [c.clone() for c in crops]
    for c in crops_bad:
        c[1] = 100 * torch.randn_like(c[1])  # whatever stands in for the unreadable image
    results = []
    for views, weight in ((_views(crops_bad, [0, 1, 2, 3], 2), torch.tensor([4 / 3, 0.0, 4 / 3, 4 / 3])),
                          (_views(crops, [0, 2, 3], 2), None)):
        teacher, student = _linear_pair()
        method = DinoMethod(teacher, student, DinoLoss(16))
        opt = torch.optim.SGD(param_groups(student), lr=0.0)
        step = TrainStep(method, student, opt, lr=1.0)
        res = step(views, 0, row_weight=weight)
        assert res.applied and views.globals_.shape[0] == 2 * views.batch_size
        results.append([p.detach().clone() for p in student.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_train_step_applies_schedules_clipping_and_the_guard():
    teacher, student = _linear_pair()
    method = DinoMethod(teacher, student, DinoLoss(16))
    opt = make_optimizer(student, "adamw")
    lr, wd = np.linspace(0.1, 0.2, 5), np.linspace(0.01, 0.05, 5)
    clock = StageClock(torch.device("cpu"))
    step = TrainStep(method, student, opt, lr=lr, weight_decay=wd, clip_grad=1e-3, clock=clock,
                     loss_hook=lambda loss, i: loss * float("nan") if i == 3 else loss)
    gen = torch.Generator().manual_seed(1)
    views = Views(torch.randn(8, 3, 16, 16, generator=gen), None, torch.full((4,), -1), 4, 2)
    before = [p.detach().clone() for p in student.parameters()]
    res = step(views, 2)
    assert res.applied and float(res.grad_norm) > 1e-3  # the norm before clipping
    assert [g["lr"] for g in opt.param_groups] == [lr[2], lr[2]]
    assert opt.param_groups[0]["weight_decay"] == wd[2] and opt.param_groups[1]["weight_decay"] == 0.0
    moved = [p.detach().clone() for p in student.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, moved))
    res = step(views, 3)  # a non-finite loss: skipped, weights untouched
    assert not res.applied and step.guard.total == 1
    assert all(torch.equal(a, b) for a, b in zip(moved, student.parameters()))
    assert {"teacher/forward", "student/forward_backward", "optimizer"} <= set(clock.collect())


def test_while_computing_runs_once_after_the_teacher_forward():
    teacher, student = _linear_pair()
    calls: list[str] = []

    def run_teacher(x):
        calls.append("teacher")
        return teacher(x)

    method = DinoMethod(teacher, student, DinoLoss(16))
    step = TrainStep(method, student, make_optimizer(student), lr=0.1, run_teacher=run_teacher)
    views = Views(torch.randn(8, 3, 16, 16), None, torch.full((4,), -1), 4, 2)
    step(views, 0, while_computing=lambda: calls.append("next views"))
    assert calls == ["teacher", "next views"]
    step(views, 1)  # without a callback: nothing extra
    assert calls == ["teacher", "next views", "teacher"]


def test_while_computing_runs_outside_the_steps_autocast():
    """The step's forward passes run in bf16; the host work it overlaps (the next step's views) does not."""
    teacher, student = _linear_pair()
    seen: dict[str, bool] = {}

    def run_teacher(x):
        seen["teacher"] = torch.is_autocast_enabled("cpu")
        return teacher(x)

    method = DinoMethod(teacher, student, DinoLoss(16))
    step = TrainStep(method, student, make_optimizer(student), lr=0.1, run_teacher=run_teacher,
                     autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    views = Views(torch.randn(8, 3, 16, 16), None, torch.full((4,), -1), 4, 2)
    step(views, 0, while_computing=lambda: seen.__setitem__("next views", torch.is_autocast_enabled("cpu")))
    assert seen == {"teacher": True, "next views": False}


def test_adamw_uses_the_fused_kernel_on_cpu_with_the_per_tensor_loops_updates():
    """The default optimiser on CPU is torch's fused AdamW (one kernel per tensor: fewer parallel
    regions per step); over 12 steps with decayed and undecayed groups it moves the weights as the
    per-tensor AdamW does, to float rounding, and a skipped step leaves weights and state untouched."""
    torch.manual_seed(0)
    # (no conv bias before the BatchNorm: its gradient is rounding noise, which Adam scales to full steps)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 14 * 14, 10))
    fused_model, loop_model = copy.deepcopy(model), copy.deepcopy(model)
    fused, loop = make_optimizer(fused_model), make_optimizer(loop_model, fused=False)
    assert [g["fused"] for g in fused.param_groups] == [True, True]
    assert not any(g["fused"] for g in loop.param_groups)
    gen = torch.Generator().manual_seed(1)
    for i in range(12):
        x = torch.randn(4, 3, 16, 16, generator=gen)
        for m, opt in ((fused_model, fused), (loop_model, loop)):
            for g in opt.param_groups:
                g["lr"] = 1e-3 * (1 + i / 12)
                if g["regularized"]:
                    g["weight_decay"] = 0.05
            opt.zero_grad(set_to_none=True)
            m(x).logsumexp(-1).mean().backward()
            opt.step()
    start = [p.detach().clone() for p in model.parameters()]
    for a, b, s in zip(fused_model.parameters(), loop_model.parameters(), start):
        assert not torch.equal(a, s)  # both moved
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    teacher, student = _linear_pair()
    opt = make_optimizer(student)
    step = TrainStep(DinoMethod(teacher, student, DinoLoss(16)), student, opt, lr=0.1,
                     loss_hook=lambda loss, i: loss * float("inf") if i == 1 else loss)
    views = Views(torch.randn(8, 3, 16, 16, generator=gen), None, torch.full((4,), -1), 4, 2)
    assert step(views, 0).applied and opt.param_groups[0]["fused"]
    before = [p.detach().clone() for p in student.parameters()]
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in student.parameters()]
    assert not step(views, 1).applied  # non-finite: skipped, weights and AdamW's moments untouched
    assert all(torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert all(torch.equal(v, opt.state[p][k]) for s, p in zip(state, student.parameters()) for k, v in s.items())
