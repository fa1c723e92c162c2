"""The RoB training loop, run by every worker (Ray Train) or in-process (LocalContext).

Set-up from the config (models, method, optimiser, schedules, resume; the pieces it shares with the
multi-student loop live in `rob_ray.train.setup`), then per step: the next
`BuiltViews` (`rob_ray.data.views`: crops made in this worker — batched, on its device — or
uint8 views from the data actors, normalised with the *teacher's* statistics; step t+1's are
prepared while step t computes) -> `TrainStep` (`rob_ray.train.step`: the method, backward,
clipping, the non-finite guard, AdamW with per-step LR / weight-decay schedules) -> metrics and
checkpoints. Everything needed to continue lives in the checkpoint.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from rob_ray.config import Config, config_to_dict
from rob_ray.data.policy import build_policy
from rob_ray.methods import build_method, build_models, needs_pretrained_teacher
from rob_ray.train.best import BestCheckpoint
from rob_ray.train.context import TrainContext
from rob_ray.train.elastic import global_mean
from rob_ray.train.faults import NonFiniteGuard
from rob_ray.train.metrics import MetricsWriter, StageTimer, distribution_stats
from rob_ray.train.rank_state import gather_rank_state, restore_rank_state
from rob_ray.train.setup import (
    device_setup,
    distributed,
    epoch_evaluator,
    optim_schedules,
    optimizer_for,
    resume_position,
    run_teacher,
    step_range,
    view_stream,
    watchers,
    worker_threads,
)
from rob_ray.train.step import TrainStep, param_groups
from rob_ray.train.timing import StageClock, flops_per_image, mfu

__all__ = ["build_optimizer", "param_groups", "train_loop", "worker_threads"]


def build_optimizer(cfg: Config, model: nn.Module, fused: bool | None = None) -> torch.optim.Optimizer:
    return optimizer_for(cfg.optim, model, fused=fused)


def train_loop(cfg: Config, ctx: TrainContext, num_images: int) -> dict[str, Any]:
    """Train (or resume) until the configured number of steps; returns the final metrics."""
    if cfg.students:  # several students, one teacher pass per step
        from rob_ray.train.students import train_students

        return train_students(cfg, ctx, num_images)
    dev = device_setup(cfg, ctx)  # rob_ray.train.setup: the set-up this loop shares with train_students
    device, is_cuda, autocast, channels_last = dev.device, dev.is_cuda, dev.autocast, dev.channels_last
    torch.manual_seed(cfg.seed)  # same initial student on every rank (DDP also broadcasts it)

    teacher, student = build_models(cfg)  # the method decides: pretrained teacher, or an EMA of the student
    teacher, student = teacher.to(device), student.to(device)
    if dev.use_bf16 and is_cuda and needs_pretrained_teacher(cfg.method):
        teacher = teacher.to(torch.bfloat16)  # frozen: bf16 weights skip autocast's per-step casts
    method = build_method(cfg.method, teacher, student).to(device)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    policy = build_policy(cfg.augment)
    steps = step_range(cfg, ctx, num_images)
    share, end, spe, global_batch = steps.share, steps.end, steps.spe, steps.global_batch
    method.set_schedule(steps.total, spe)
    lr_sched, wd_sched = optim_schedules(cfg.optim, steps)
    optimizer = build_optimizer(cfg, student)

    start, skipped = 0, 0
    faults, preempt = watchers(cfg, ctx)
    guard = NonFiniteGuard(cfg.run.max_nonfinite_steps, ctx.world_size)
    best = BestCheckpoint(ctx.run_dir, cfg.run.checkpoint_score_metric, cfg.run.checkpoint_score_mode) \
        if cfg.run.checkpoint_score_metric and ctx.rank == 0 else None
    state = ctx.load_latest()
    if state is not None:
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        note = restore_rank_state(method, state.get("method_ranks"), ctx.rank, ctx.world_size)
        if note and ctx.rank == 0:
            print(f"[rob_ray] note: {note}", flush=True)
        torch.set_rng_state(state["rng"]["torch"])
        if is_cuda and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        start, skipped = resume_position(state, ctx, steps)
        guard.load_state_dict(state.get("nonfinite"))

    clock = StageClock(device)  # per-stage device times, read at logging steps only
    flops_image = flops_per_image(method, teacher, student, policy, device, autocast)
    model = distributed(student, ctx, dev, clock)
    # Static shapes (fixed batch per worker, drop_last, unreadable rows kept): one graph per module.
    run_student = torch.compile(model, dynamic=False) if dev.compile else model
    teacher_fn = run_teacher(teacher, cfg, ctx, dev, steps, method.calls_run_teacher() and start < end)
    train_step = TrainStep(method, student, optimizer, lr=lr_sched, weight_decay=wd_sched, clip_grad=cfg.optim.clip_grad,
                           run_teacher=teacher_fn, run_student=run_student, autocast=autocast, guard=guard, clock=clock,
                           loss_hook=lambda loss, i: faults.poison(loss, i + 1))

    writer = MetricsWriter(ctx.run_dir, end) if ctx.rank == 0 else None
    timer = StageTimer()
    epoch_eval = epoch_evaluator(cfg, ctx, dev, teacher, steps, best=best, config=config_to_dict(cfg),
                                 log_row=writer.write if writer is not None else None)  # inline or async
    g_views, metrics = policy.num_global, {}
    window_t0, step_images = time.perf_counter(), 0
    views_in = view_stream(ctx, policy, steps, start, teacher, dev, cfg.seed, clock, timer)
    student.train()
    for step in range(start, end):
        built = next(views_in)  # data/wait and augment stages are timed inside the stream
        skipped += built.n_bad
        faults.before_step(step + 1)
        timer.start("step")
        # Step t+1's batch is fetched and its views queued while step t computes (a side stream on CUDA).
        result = train_step(built.views, step, built.row_weight, built.loss_weight * share,
                            while_computing=views_in.prefetch)
        timer.stop("step")
        out, views = result.out, built.views
        step_images += global_batch
        done = step + 1
        log_now = done % cfg.run.log_every_steps == 0 or done == end or done % spe == 0  # epoch ends: online k-NN
        epoch_end = done % spe == 0 and (done // spe) % cfg.run.checkpoint_every_epochs == 0
        ckpt_now = done % cfg.run.checkpoint_every_steps == 0 or epoch_end or done == end
        ckpt_now = ckpt_now and (guard.in_a_row == 0 or done == end)  # mid-streak its step would say "past the fault"
        noticed = done < end and preempt.check(done)  # a node is about to go: save after this step
        ckpt_now = ckpt_now or noticed
        log_now = log_now or ckpt_now or guard.should_stop
        if log_now or ckpt_now:
            if is_cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - window_t0
            stages = timer.reset()
            stats = {}
            if out.teacher_probs is not None and out.student_log_probs is not None:
                stats = distribution_stats(out.teacher_probs, out.student_log_probs, g_views)
            skipped_all = _sum_across_ranks(skipped, device, ctx.world_size)
            window_images = step_images
            rate = window_images / max(elapsed, 1e-9)
            metrics = {
                "step": done, "epoch": step // spe, "epochs_done": done / spe,
                "loss": global_mean(out.loss, views.batch_size, global_batch, ctx.world_size, device),
                "lr": float(lr_sched[step]),
                "weight_decay": float(wd_sched[step]), "img_per_s": rate,
                "data_wait_frac": stages.get("data/wait", 0.0) / max(elapsed, 1e-9),
                "skipped_images": skipped_all, "eta_s": (end - done) * global_batch / max(rate, 1e-9),
                **{k: float(v) for k, v in stats.items()},
                **{f"time/{k}": v for k, v in stages.items()},
                **{f"time/{k}": v for k, v in clock.collect().items()},
                "flops_per_image": flops_image,
                **({"mfu": m} if (m := mfu(rate / ctx.world_size, flops_image, cfg.run.peak_tflops)) is not None else {}),
                **method.extra_metrics(), "nonfinite_steps": guard.total,
                **epoch_eval(done, student, views.globals_[: views.batch_size]),  # epoch ends only
            }
            if not math.isfinite(metrics["loss"]) and ctx.rank == 0:
                print(f"[rob_ray] warning: non-finite loss at step {done}", flush=True)
            if writer is not None:
                writer.write(metrics)
            window_t0, step_images = time.perf_counter(), 0
            if guard.should_stop:  # weights untouched since the streak began: save them under that step
                saved = done - guard.in_a_row
                metrics["stop_reason"] = guard.stop_message(done, saved)
                payload = _state(cfg, ctx, student, optimizer, method, guard, saved, skipped_all, is_cuda)
                ctx.save(saved, payload, metrics)
                if ctx.rank == 0:
                    print(f"[rob_ray] {metrics['stop_reason']}", flush=True)
                break
            if ckpt_now:
                payload = _state(cfg, ctx, student, optimizer, method, guard, done, skipped_all, is_cuda)
                if payload is not None and best is not None and not epoch_eval.keeps_best:
                    best.update(done, payload, metrics)
                ctx.save(done, payload, metrics)
                if noticed:
                    preempt.after_save(done)
            else:
                ctx.report(metrics)
    if writer is not None:
        writer.close()
    if best is not None and not best.seen:
        print(f"[rob_ray] warning: run.checkpoint_score_metric '{cfg.run.checkpoint_score_metric}' never appeared in "
              f"the checkpoint metrics ({', '.join(sorted(metrics))}); no best checkpoint was kept", flush=True)
    ctx.flush_outputs()
    return metrics


def _state(cfg: Config, ctx: TrainContext, student: nn.Module, optimizer: torch.optim.Optimizer, method: nn.Module,
           guard: NonFiniteGuard, step: int, skipped: int, is_cuda: bool) -> dict[str, Any] | None:
    """The checkpoint payload on rank 0 (None elsewhere). Called by every rank: it gathers rank-local state."""
    ranks = gather_rank_state(method, ctx.world_size)
    if ctx.rank != 0:
        return None
    state = {
        "student": student.state_dict(),
        "optimizer": optimizer.state_dict(),
        "method": method.state_dict(),  # centre, queues, EMA teacher: whatever the method keeps
        "step": step,
        "skipped_images": skipped,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if is_cuda else None},
        "config": config_to_dict(cfg),
        "nonfinite": guard.state_dict(),
        "world_size": ctx.world_size,
    }
    if ranks is not None:
        state["method_ranks"] = ranks  # every worker's own queue (SwAV)
    return state


def _sum_across_ranks(value: int, device: torch.device, world_size: int) -> int:
    if world_size == 1:
        return value
    t = torch.tensor([value], device=device, dtype=torch.int64)
    torch.distributed.all_reduce(t)
    return int(t.item())
