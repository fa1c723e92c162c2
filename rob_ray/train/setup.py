"""The set-up a training loop does before its first step, shared by the single-student loop
(`rob_ray.train.loop.train_loop`) and the multi-student one (`rob_ray.train.students.train_students`):
device and precision, the run's sample schedule and step range, a student's LR / weight-decay schedules
and optimiser, the fault and preemption watchers, the resume position, the DDP wrapper, the view stream
and the online evaluator. Each piece does exactly what both loops did inline, so a student of a
multi-student run stays bitwise equal to its own run (tests/train/test_students.py).

Plain torch (no Ray): the GPU box runs these loops without Ray.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rob_ray.config import Config, OptimConfig
from rob_ray.data.policy import CropPolicy
from rob_ray.data.schedule import SampleSchedule
from rob_ray.data.views import ViewsBuilder, ViewStream
from rob_ray.eval.background import build_epoch_evaluator
from rob_ray.eval.online import EpochEvaluator
from rob_ray.methods import needs_pretrained_teacher
from rob_ray.precision import uses_bf16
from rob_ray.train.compiled import TeacherMode, prepare_teacher, teacher_mode
from rob_ray.train.context import TrainContext
from rob_ray.train.elastic import rank_share, resize_note
from rob_ray.train.faults import FaultInjector
from rob_ray.train.metrics import StageTimer
from rob_ray.train.preemption import PreemptionWatch
from rob_ray.train.schedules import cosine_schedule
from rob_ray.train.step import make_optimizer
from rob_ray.train.timing import StageClock, allreduce_timing_hook

__all__ = ["DeviceSetup", "StepRange", "device_setup", "distributed", "epoch_evaluator", "optim_schedules",
           "optimizer_for", "resume_position", "run_teacher", "step_range", "view_stream", "watchers", "worker_threads"]


def worker_threads(cfg: Config) -> int:
    """Torch intra-op threads of a CPU training worker: `scaling.torch_threads`, else its CPUs
    rounded; the launch plan fills both in (`rob_ray.train.plan`), and plans here when unset."""
    if cfg.scaling.torch_threads:
        return cfg.scaling.torch_threads
    if cfg.scaling.cpus_per_worker is not None:
        return max(1, round(cfg.scaling.cpus_per_worker))
    from rob_ray.train.plan import resource_plan

    return int(resource_plan(cfg)["torch_threads"])


@dataclass
class DeviceSetup:
    device: torch.device
    is_cuda: bool
    use_bf16: bool
    autocast: Callable[[], Any]  # a fresh autocast (or null) context per call
    channels_last: bool
    compile: bool  # torch.compile the student(s)
    teacher_mode: TeacherMode  # how the step runs the teacher (rob_ray.train.compiled)


def device_setup(cfg: Config, ctx: TrainContext) -> DeviceSetup:
    """The worker's device and precision; sets torch's threads on a CPU worker."""
    device = ctx.device
    is_cuda = device.type == "cuda"
    if not is_cuda:
        torch.set_num_threads(worker_threads(cfg))
    use_bf16 = uses_bf16(cfg.run.precision, is_cuda)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    return DeviceSetup(device, is_cuda, use_bf16, autocast, cfg.run.channels_last,
                       cfg.run.compile if cfg.run.compile is not None else is_cuda,
                       teacher_mode(cfg.run.compile_teacher, cfg.run.compile, is_cuda=is_cuda,
                                    frozen_teacher=needs_pretrained_teacher(cfg.method)))


@dataclass
class StepRange:
    """The run's sample schedule (one global batch per step, split over the workers present:
    `rob_ray.train.elastic`) and the steps this launch trains."""

    schedule: SampleSchedule
    share: float  # this rank's share of the global batch's loss
    total: int  # steps of the whole schedule (what LR / weight-decay / method schedules span)
    end: int  # the last step to train (optim.max_steps may cut the schedule short)
    spe: int  # steps per epoch
    global_batch: int


def step_range(cfg: Config, ctx: TrainContext, num_images: int) -> StepRange:
    schedule = SampleSchedule(num_images, ctx.world_size, cfg.optim.batch_size, cfg.optim.epochs, cfg.seed,
                              cfg.global_batch())
    total = schedule.total_steps
    return StepRange(schedule, rank_share(schedule, ctx.rank), total,
                     min(total, cfg.optim.max_steps) if cfg.optim.max_steps else total, schedule.steps_per_epoch,
                     schedule.global_batch_size)


def optim_schedules(optim: OptimConfig, steps: StepRange) -> tuple[np.ndarray, np.ndarray]:
    """Per-step LR (linear scaling: `lr` is per 256 images; warm-up then cosine) and weight decay (cosine)."""
    lr = cosine_schedule(optim.lr * steps.global_batch / 256, optim.min_lr, steps.total,
                         int(optim.warmup_epochs * steps.spe))
    return lr, cosine_schedule(optim.weight_decay, optim.weight_decay_end, steps.total)


def optimizer_for(optim: OptimConfig, model: nn.Module, fused: bool | None = None) -> torch.optim.Optimizer:
    return make_optimizer(model, optim.optimizer, momentum=optim.momentum, fused=fused)


def watchers(cfg: Config, ctx: TrainContext) -> tuple[FaultInjector, PreemptionWatch]:
    """The run's fault injector (`debug.*`) and preemption watch."""
    faults = FaultInjector.from_config(cfg.debug, ctx.run_dir, ctx.rank)
    preempt = PreemptionWatch(ctx.preemption_probe(), cfg.run.preemption_check_every_steps, cfg.debug.preempt_at_step,
                              ctx.run_dir, ctx.rank, cfg.debug.fail_mode)
    return faults, preempt


def resume_position(state: dict[str, Any], ctx: TrainContext, steps: StepRange, what: str = "") -> tuple[int, int]:
    """(first step, images skipped so far) of a resumed run; rank 0 says so (and notes a resize).
    The saved skip count is the all-ranks total: it is restored on one rank only."""
    start, skipped = int(state["step"]), int(state["skipped_images"]) if ctx.rank == 0 else 0
    if ctx.rank == 0:
        print(f"[rob_ray] resumed {what}from step {start} (epoch {start // steps.spe})", flush=True)
        if note := resize_note(state.get("world_size"), ctx.world_size, start, steps.schedule):
            print(f"[rob_ray] {note}", flush=True)
    return start, skipped


def distributed(student: nn.Module, ctx: TrainContext, dev: DeviceSetup, clock: StageClock) -> nn.Module:
    """The student as its step runs it: DDP-wrapped (all-reduce timed into `clock`) with several workers."""
    if ctx.world_size == 1:
        return student
    model = nn.parallel.DistributedDataParallel(student, device_ids=[dev.device.index] if dev.is_cuda else None)
    model.register_comm_hook(None, allreduce_timing_hook(clock))
    return model


def run_teacher(teacher: nn.Module, cfg: Config, ctx: TrainContext, dev: DeviceSetup, steps: StepRange,
                called: bool = True) -> Callable[..., Any]:
    """What the step calls as its teacher (`dev.teacher_mode`; eager when the methods never call it:
    `called`, from `Method.calls_run_teacher`); rank 0 logs a fallback to eager."""
    if not called:
        return teacher
    a = cfg.augment
    example = torch.zeros(a.num_global * steps.schedule.rank_batch(ctx.rank), 3, a.global_size, a.global_size,
                          device=dev.device)
    if dev.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    run, note = prepare_teacher(teacher, dev.teacher_mode, example, dev.autocast)
    if note and ctx.rank == 0:
        print(f"[rob_ray] note: {note}", flush=True)
    return run


def view_stream(ctx: TrainContext, policy: CropPolicy, steps: StepRange, start: int, teacher: nn.Module,
                dev: DeviceSetup, seed: int, clock: StageClock, timer: StageTimer) -> ViewStream:
    """This launch's views (steps `start` to `steps.end`), normalised with the teacher's statistics."""
    return ViewStream(ctx.batches(policy, steps.schedule, start, steps.end),
                      ViewsBuilder(policy, teacher.mean, teacher.std, dev.device, dev.channels_last, seed=seed),
                      clock=clock, timer=timer)


def epoch_evaluator(cfg: Config, ctx: TrainContext, dev: DeviceSetup, teacher: nn.Module, steps: StepRange, *,
                    best: Any = None, config: dict[str, Any] | None = None,
                    log_row: Callable[[dict[str, Any]], None] | None = None, shared: dict[str, Any] | None = None,
                    key: str = "student") -> EpochEvaluator:
    """The online evaluator `eval.online_knn_mode` asks for (inline, async on a copy of the student, or on an
    evaluation actor: `shared` / `key` let a multi-student run's students share one, see `build_epoch_evaluator`)."""
    return build_epoch_evaluator(cfg.eval, rank=ctx.rank, world_size=ctx.world_size, device=dev.device,
                                 mean=teacher.mean, std=teacher.std, size=cfg.augment.global_size,
                                 steps_per_epoch=steps.spe, end_step=steps.end, channels_last=dev.channels_last,
                                 best=best, config=config, log_row=log_row, shared=shared, key=key)
