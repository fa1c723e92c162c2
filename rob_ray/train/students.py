"""Several students, one teacher pass per step (`students:` in the config).

The frozen teacher is the expensive, unchanging part of a RoB step, and the sample stream is a pure
function of (seed, epoch, step, rank): every student of a run sees the same views. So the loop builds
the views once, runs the teacher once on the global views (`SharedTeacher` hands the same output to
every student's method) and steps each student with its own method (centre, queue), optimiser,
schedules, non-finite guard, DDP wrapper, best checkpoint and online k-NN.

Each student is exactly its own single-student run: it is built right after `torch.manual_seed(seed)`
(as `train_loop` builds its one student) and runs on its own copy of torch's RNG state (swapped in
around its step), so drop-path, iBOT masks and MSN token drops of one student never shift another's.
On CPU a student's weights equal its single run's bitwise (tests/train/test_students.py).

Outputs: metrics `<name>/<key>` per student (the first student's also unprefixed: Tune and
`run.checkpoint_score_metric` keep working), one checkpoint holding every student (`students`:
{name: its student / optimizer / method / rng / nonfinite}; the first student's state also at the
top level, so single-student tools read it), `best_<name>/` per student (a plain single-student
checkpoint with that student's resolved config), and a table at the end (`students.md`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rob_ray.config import Config, config_to_dict, student_configs
from rob_ray.data.policy import build_policy
from rob_ray.errors import CheckpointError, ConfigError
from rob_ray.eval.online import EpochEvaluator
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
)
from rob_ray.train.step import TrainStep
from rob_ray.train.timing import StageClock, flops_per_image, mfu

__all__ = ["SharedTeacher", "StudentRun", "pick_student", "students_plan", "students_table", "train_students"]

# Per-student metric keys (prefixed `<name>/`); the rest of a metrics row is the run's (step, data, ...).
_SHARED_KEYS = ("step", "epoch", "epochs_done", "img_per_s", "data_wait_frac", "skipped_images", "eta_s")


def _key(x: Any) -> Any:
    if isinstance(x, torch.Tensor):  # the same tensor, unchanged: same storage, layout and version
        return ("tensor", x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device), x._version)
    if isinstance(x, list | tuple):
        return (type(x).__name__, *(_key(v) for v in x))
    try:
        hash(x)
        return x
    except TypeError:
        return ("repr", repr(x))


class SharedTeacher:
    """The teacher as every student's method sees it: within one step (until `clear()`), a call with
    the same inputs (the same tensor, unchanged) is computed once and its output handed to every
    caller. Covers `teacher(x)` (through `run`, e.g. the compiled teacher) and the direct
    `teacher.forward_with_patches(x)` / `teacher.embed(x)` some methods make; any other attribute
    (prototypes, mean, std, num_prototypes, ...) is the teacher's own.

    Sharing is exact because the teacher is frozen (eval mode, no state changes in forward) and no
    loss writes into its inputs' teacher outputs; all students run under the same autocast.
    """

    CACHED = ("forward_with_patches", "embed")

    def __init__(self, teacher: nn.Module, run: Callable | None = None) -> None:
        object.__setattr__(self, "_teacher", teacher)
        object.__setattr__(self, "_run", run if run is not None else teacher)
        object.__setattr__(self, "_cache", {})
        object.__setattr__(self, "calls", 0)  # computed (not cached) calls, for tests and the benchmark

    def _cached(self, name: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        key = (name, torch.is_grad_enabled(), _key(args), _key(sorted(kwargs.items())))
        if key not in self._cache:
            self._cache[key] = fn(*args, **kwargs)
            object.__setattr__(self, "calls", self.calls + 1)
        return self._cache[key]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._cached("forward", self._run, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(object.__getattribute__(self, "_teacher"), name)
        if name in SharedTeacher.CACHED and callable(attr):
            return lambda *a, **kw: self._cached(name, attr, *a, **kw)
        return attr

    def clear(self) -> None:
        self._cache.clear()


class StudentRun:
    """One student of a multi-student run: its model, method, optimiser, schedules, guard, RNG state,
    clock and evaluator. `step()` runs a `TrainStep` with this student's RNG state swapped in."""

    def __init__(self, name: str, cfg: Config, student: nn.Module, method: nn.Module, rng: torch.Tensor,
                 cuda_rng: torch.Tensor | None) -> None:
        self.name, self.cfg, self.student, self.method = name, cfg, student, method
        self.rng, self.cuda_rng = rng, cuda_rng
        self.optimizer: torch.optim.Optimizer | None = None
        self.train_step: TrainStep | None = None
        self.guard: NonFiniteGuard | None = None
        self.best: BestCheckpoint | None = None
        self.evaluator: EpochEvaluator | None = None
        self.clock: StageClock | None = None
        self.lr: Any = None
        self.wd: Any = None
        self.flops = 0.0
        self.params = sum(p.numel() for p in student.parameters())
        self.stopped = ""  # why this student stopped early ("" while it trains)
        self.result: Any = None
        self.totals: dict[str, float] = {}  # stage seconds over the whole run
        self.images = 0
        self.last: dict[str, Any] = {}

    @contextlib.contextmanager
    def own_rng(self):
        """This student's torch RNG state in place of the global one (saved back afterwards)."""
        outer = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state() if self.cuda_rng is not None else None
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng)
        try:
            yield
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)
            if self.cuda_rng is not None:
                self.cuda_rng = torch.cuda.get_rng_state()
                torch.cuda.set_rng_state(outer_cuda)

    def step(self, *args: Any, **kwargs: Any) -> Any:
        with self.own_rng():
            self.result = self.train_step(*args, **kwargs)
        self.images += args[0].batch_size
        return self.result

    def state(self, world_size: int, rank: int) -> dict[str, Any] | None:
        """This student's checkpoint entry (rank 0; None elsewhere). A collective (rank-local method state)."""
        ranks = gather_rank_state(self.method, world_size)
        if rank != 0:
            return None
        out = {"student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
               "method": self.method.state_dict(), "rng": {"torch": self.rng.clone(), "cuda": self.cuda_rng},
               "nonfinite": self.guard.state_dict(), "stopped": self.stopped}
        if ranks is not None:
            out["method_ranks"] = ranks
        return out

    def load(self, entry: dict[str, Any], rank: int, world_size: int) -> str | None:
        self.student.load_state_dict(entry["student"])
        self.optimizer.load_state_dict(entry["optimizer"])
        self.method.load_state_dict(entry["method"])
        note = restore_rank_state(self.method, entry.get("method_ranks"), rank, world_size)
        self.rng = entry["rng"]["torch"]
        if self.cuda_rng is not None and entry["rng"].get("cuda") is not None:
            self.cuda_rng = entry["rng"]["cuda"]
        self.guard.load_state_dict(entry.get("nonfinite"))
        self.stopped = str(entry.get("stopped", "") or "")
        return note


def pick_student(cfg: Config, state: dict[str, Any], name: str | None = None
                 ) -> tuple[str, Config, dict[str, Any]]:
    """(name, resolved config, checkpoint entry with `student` / `method` / ...) of one student of a
    checkpoint: `name`, or the first student. A single-student run's checkpoint is its own entry.
    Raises CheckpointError naming the students there are."""
    configs = dict(student_configs(cfg))
    if not cfg.students:
        if name not in (None, ""):
            raise CheckpointError(f"--student '{name}': this run trained one student (no students: list); "
                                  "leave --student out")
        return "", cfg, state
    name = name or cfg.students[0].name
    if name not in configs:
        raise CheckpointError(f"--student '{name}' is not a student of this run; choose one of {', '.join(configs)}")
    entries = state.get("students") or {}
    if name not in entries:
        if len(configs) == 1 and "student" in state:  # written before `students` entries existed
            return name, configs[name], state
        raise CheckpointError(f"the checkpoint has no entry for student '{name}' (it has "
                              f"{', '.join(entries) or 'none'}); was it written by another config?")
    return name, configs[name], entries[name]


def students_table(runs: list[StudentRun], teacher_s: float, step_s: float) -> str:
    """The end-of-run table (markdown): student, params, img/s of its own step, online k-NN, final loss."""
    lines = ["| student | arch | params (M) | img/s (own step) | online k-NN top-1 | final loss | status |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in runs:
        own = r.totals.get("student/forward_backward", 0.0) + r.totals.get("optimizer", 0.0)
        rate = r.images / own if own > 0 else float("nan")
        knn = r.last.get("online_knn_top1")
        loss = r.last.get("loss", float("nan"))
        lines.append(f"| {r.name} | {r.cfg.student.arch} | {r.params / 1e6:.2f} | {rate:.0f} | "
                     f"{'' if knn is None else f'{knn:.1f}'} | {loss:.4f} | {r.stopped or 'done'} |")
    share = teacher_s / step_s if step_s > 0 else float("nan")
    lines.append("")
    lines.append(f"teacher forward (once per step, shared): {teacher_s:.1f} s of {step_s:.1f} s of step time "
                 f"({100 * share:.0f} %)")
    return "\n".join(lines)


def _teacher_flops(teacher: nn.Module, policy: Any, batch: int = 2) -> float:
    """FLOPs of the teacher's forward on one image's global views (counted once)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(policy.num_global * batch, 3, policy.global_size, policy.global_size,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        teacher(x)
    return counter.get_total_flops() / batch


def students_plan(cfg: Config, teacher: nn.Module) -> dict[str, Any]:
    """The `--dry-run` plan of a multi-student run: memory (GiB per worker) and FLOPs per image of every
    student, and the run's totals with the teacher counted once. Builds each student on CPU (checking it
    against the teacher like a single run's preflight) without touching the caller's RNG.

    Memory total: the teacher (weights, activations), CUDA context and every student's weights, gradients
    and optimiser state are held together; students step one after another, so only the largest student
    activations + loss tensors are live at once."""
    from rob_ray.checks.compat import check_compatibility
    from rob_ray.checks.memory import estimate_worker_memory

    _check(cfg)
    policy = build_policy(cfg.augment)
    t_flops = _teacher_flops(teacher, policy)
    rows, shared, held, live = [], 0.0, 0.0, 0.0
    with torch.random.fork_rng(devices=[]):
        for name, scfg in student_configs(cfg):
            torch.manual_seed(cfg.seed)
            _, student = build_models(scfg, teacher=teacher)
            method = build_method(scfg.method, teacher, student)
            rep = check_compatibility(scfg, teacher, student)
            if rep.errors:
                raise ConfigError(f"{rep.errors[0]} (student '{name}')")
            est = estimate_worker_memory(scfg, teacher, student)
            flops = flops_per_image(method, teacher, student, policy, torch.device("cpu")) - t_flops
            shared = est["teacher_weights"] + est["teacher_activations"] + est["cuda_overhead"]
            held += est["student_weights_grads_optimizer"]
            live = max(live, est["student_activations"] + est["loss"])
            rows.append({"name": name, "arch": scfg.student.arch,
                         "params_M": round(sum(p.numel() for p in student.parameters()) / 1e6, 2),
                         "memory_alone_GiB": round(est["total"], 2), "memory_own_GiB":
                         round(est["student_weights_grads_optimizer"] + est["student_activations"] + est["loss"], 2),
                         "student_GFLOPs_per_image": round(flops / 1e9, 6)})
    total_flops = t_flops + sum(r["student_GFLOPs_per_image"] * 1e9 for r in rows)
    alone_flops = len(rows) * t_flops + sum(r["student_GFLOPs_per_image"] * 1e9 for r in rows)
    return {"students": rows, "teacher_GFLOPs_per_image": round(t_flops / 1e9, 6),
            "students_total_GFLOPs_per_image": round(total_flops / 1e9, 6),
            "students_separate_runs_GFLOPs_per_image": round(alone_flops / 1e9, 6),
            "students_memory_est_GiB": round(shared + held + live, 2)}


def _check(cfg: Config) -> None:
    if not needs_pretrained_teacher(cfg.method):
        raise ConfigError(f"config error: students: method '{cfg.method.name}' trains its own EMA teacher from each "
                          "student, so there is no teacher pass to share; train the students in separate runs")


def train_students(cfg: Config, ctx: TrainContext, num_images: int,
                   drop: Callable[[dict[str, dict[str, Any]]], set[str]] | None = None) -> dict[str, Any]:
    """`train_loop` for a config with `students:` (see the module docstring); returns the final metrics.

    `drop({name: metrics})`: asked at every logging step with every student still training (its own
    metrics, unprefixed, plus the run's step / epochs_done); the names it returns stop (no more compute
    for them, their last state stays in the checkpoint), the others go on. Default: with
    `tune.stop_students_early` (a shared-teacher sweep's group run), the sweep's ASHA rungs
    (`rob_ray.tune.groups.RungStopper`); else none.
    """
    from rob_ray.models import build_teacher

    _check(cfg)
    if drop is None and cfg.tune.stop_students_early:
        from rob_ray.tune.groups import RungStopper

        drop = RungStopper.from_config(cfg)
    dev = device_setup(cfg, ctx)  # rob_ray.train.setup: the set-up train_loop does, shared
    device, is_cuda, autocast, channels_last = dev.device, dev.is_cuda, dev.autocast, dev.channels_last

    with torch.random.fork_rng(devices=[]):  # as build_models: the teacher does not consume the seed's stream
        teacher = build_teacher(cfg.teacher)
    built = []
    for name, scfg in student_configs(cfg):
        torch.manual_seed(cfg.seed)  # each student starts exactly as in its own run (train_loop seeds, then builds)
        _, student = build_models(scfg, teacher=teacher)
        built.append((name, scfg, student, torch.get_rng_state()))
    teacher = teacher.to(device)
    if dev.use_bf16 and is_cuda:
        teacher = teacher.to(torch.bfloat16)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    policy = build_policy(cfg.augment)
    steps = step_range(cfg, ctx, num_images)  # as train_loop: one global batch per step (rob_ray.train.elastic)
    share, end, spe, global_batch = steps.share, steps.end, steps.spe, steps.global_batch

    runs: list[StudentRun] = []
    for name, scfg, student, rng in built:
        torch.set_rng_state(rng)
        if is_cuda:
            torch.cuda.manual_seed_all(cfg.seed)
        student = student.to(device)
        method = build_method(scfg.method, teacher, student).to(device)
        if channels_last:
            student = student.to(memory_format=torch.channels_last)
        method.set_schedule(steps.total, spe)
        run = StudentRun(name, scfg, student, method, torch.get_rng_state(),
                         torch.cuda.get_rng_state() if is_cuda else None)
        run.lr, run.wd = optim_schedules(scfg.optim, steps)
        run.optimizer = optimizer_for(scfg.optim, student)
        run.guard = NonFiniteGuard(cfg.run.max_nonfinite_steps, ctx.world_size)
        if cfg.run.checkpoint_score_metric and ctx.rank == 0:
            run.best = BestCheckpoint(ctx.run_dir, cfg.run.checkpoint_score_metric, cfg.run.checkpoint_score_mode,
                                      name=name)
        runs.append(run)

    start, skipped = 0, 0
    faults, preempt = watchers(cfg, ctx)
    state = ctx.load_latest()
    if state is not None:
        for run in runs:
            _, _, entry = pick_student(cfg, state, run.name)
            note = run.load(entry, ctx.rank, ctx.world_size)
            if note and ctx.rank == 0:
                print(f"[rob_ray] note: {run.name}: {note}", flush=True)
        start, skipped = resume_position(state, ctx, steps, f"{len(runs)} students ")

    shared = SharedTeacher(teacher, run_teacher(teacher, cfg, ctx, dev, steps,
                                                start < end and any(run.method.calls_run_teacher() for run in runs)))
    eval_shared: dict[str, Any] = {}  # eval.online_knn_mode=actor: one evaluation actor for every student
    writer = MetricsWriter(ctx.run_dir, end) if ctx.rank == 0 else None
    for run in runs:
        run.clock = StageClock(device)
        run.flops = flops_per_image(run.method, teacher, run.student, policy, device, autocast)
        object.__setattr__(run.method, "teacher", shared)  # direct teacher calls of the method are shared too
        model = distributed(run.student, ctx, dev, run.clock)
        run_student = torch.compile(model, dynamic=False) if dev.compile else model
        run.train_step = TrainStep(run.method, run.student, run.optimizer, lr=run.lr, weight_decay=run.wd,
                                   clip_grad=run.cfg.optim.clip_grad, run_teacher=shared, run_student=run_student,
                                   autocast=autocast, guard=run.guard, clock=run.clock,
                                   loss_hook=lambda loss, i: faults.poison(loss, i + 1))
        # An async / actor result the last step's report supersedes gets a row of its own, prefixed as the student's.
        log_row = None if writer is None else (lambda row, n=run.name: writer.write(
            {k if k in _SHARED_KEYS else f"{n}/{k}": v for k, v in row.items()}))
        run.evaluator = epoch_evaluator(cfg, ctx, dev, teacher, steps, best=run.best, config=config_to_dict(run.cfg),
                                        log_row=log_row, shared=eval_shared, key=run.name)
        run.student.train()

    timer = StageTimer()
    stream_clock = StageClock(device)
    g_views, metrics = policy.num_global, {}
    window_t0, step_images = time.perf_counter(), 0
    views_in = view_stream(ctx, policy, steps, start, teacher, dev, cfg.seed, stream_clock, timer)
    step_s = 0.0
    for step in range(start, end):
        built_views = next(views_in)
        skipped += built_views.n_bad
        faults.before_step(step + 1)
        timer.start("step")
        t0 = time.perf_counter()
        prefetch = views_in.prefetch
        for run in runs:
            if run.stopped:
                continue
            run.step(built_views.views, step, built_views.row_weight, built_views.loss_weight * share,
                     while_computing=prefetch)
            prefetch = None  # once, inside the first student's step (right after the shared teacher pass)
        if prefetch is not None:  # every student stopped between logging steps: keep the stream in line
            prefetch()
        shared.clear()
        step_s += time.perf_counter() - t0
        timer.stop("step")
        views = built_views.views
        step_images += global_batch
        done = step + 1
        active = [r for r in runs if not r.stopped]
        log_now = done % cfg.run.log_every_steps == 0 or done == end or done % spe == 0
        epoch_end = done % spe == 0 and (done // spe) % cfg.run.checkpoint_every_epochs == 0
        ckpt_now = done % cfg.run.checkpoint_every_steps == 0 or epoch_end or done == end
        ckpt_now = ckpt_now and (all(r.guard.in_a_row == 0 for r in active) or done == end)
        noticed = done < end and preempt.check(done)  # a node is about to go: save after this step
        ckpt_now = ckpt_now or noticed
        log_now = log_now or ckpt_now or any(r.guard.should_stop for r in active)
        if not (log_now or ckpt_now):
            continue
        if is_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - window_t0
        stages = timer.reset()
        skipped_all = _sum_across_ranks(skipped, device, ctx.world_size)
        rate = step_images / max(elapsed, 1e-9)
        metrics = {"step": done, "epoch": step // spe, "epochs_done": done / spe, "img_per_s": rate,
                   "data_wait_frac": stages.get("data/wait", 0.0) / max(elapsed, 1e-9),
                   "skipped_images": skipped_all, "eta_s": (end - done) * global_batch / max(rate, 1e-9),
                   **{f"time/{k}": v for k, v in stages.items()},
                   **{f"time/{k}": v for k, v in stream_clock.collect().items()}}
        for i, run in enumerate(runs):
            own = {}
            if not run.stopped:
                with run.own_rng():  # as in its own run, where these run on the run's one RNG stream
                    own = _student_metrics(run, step, done, views, g_views, rate, ctx, cfg, global_batch, device)
            if own:
                run.last = own
            metrics.update({f"{run.name}/{k}": v for k, v in own.items()})
            if i == 0:
                metrics.update(own)  # the first student's metrics unprefixed (Tune, checkpoint_score_metric)
        for run in active:
            if run.guard.should_stop:
                run.stopped = "stopped: " + run.guard.stop_message(done, done - run.guard.in_a_row)
        if drop is not None:
            going = {r.name: {**_shared(metrics), **r.last} for r in active if not r.stopped}
            dropped = drop(going) if going else set()
            for run in active:
                if run.name in dropped:
                    run.stopped = f"stopped early at step {done}"
        for run in active:
            if run.stopped:
                metrics[f"{run.name}/stopped"] = run.stopped
                if ctx.rank == 0:
                    print(f"[rob_ray] student {run.name}: {run.stopped}", flush=True)
        if writer is not None:
            writer.write(metrics)
        window_t0, step_images = time.perf_counter(), 0
        if all(r.stopped for r in runs):
            ckpt_now = True
        if ckpt_now:
            payload = _state(cfg, ctx, runs, done, skipped_all)
            if ctx.rank == 0:
                for run in active:
                    if run.best is not None and not run.evaluator.keeps_best:
                        run.best.update(done, _single_payload(payload, run), {**_shared(metrics), **run.last})
            ctx.save(done, payload, metrics)
            if noticed:
                preempt.after_save(done)
        else:
            ctx.report(metrics)
        if all(r.stopped for r in runs):
            break
    if writer is not None:
        writer.close()
    if ctx.rank == 0:
        teacher_s = sum(r.totals.get("teacher/forward", 0.0) for r in runs)  # computed once; the rest are look-ups
        table = students_table(runs, teacher_s, step_s)
        (ctx.run_dir / "students.md").write_text(table + "\n")
        print(f"[rob_ray] students of {cfg.run.name}:\n{table}", flush=True)
        for run in runs:
            if run.best is not None and not run.best.seen:
                print(f"[rob_ray] warning: run.checkpoint_score_metric '{cfg.run.checkpoint_score_metric}' never "
                      f"appeared in student {run.name}'s metrics; no best checkpoint was kept for it", flush=True)
    ctx.flush_outputs()
    return metrics


def _shared(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in _SHARED_KEYS if k in metrics}


def _student_metrics(run: StudentRun, step: int, done: int, views: Any, g_views: int, rate: float,
                     ctx: TrainContext, cfg: Config, global_batch: int, device: torch.device) -> dict[str, Any]:
    out = run.result.out
    stats = {}
    if out.teacher_probs is not None and out.student_log_probs is not None:
        stats = distribution_stats(out.teacher_probs, out.student_log_probs, g_views)
    stages = run.clock.collect()
    for k, v in stages.items():
        run.totals[k] = run.totals.get(k, 0.0) + v
    m = {"loss": global_mean(out.loss, views.batch_size, global_batch, ctx.world_size, device),
         "lr": float(run.lr[step]), "weight_decay": float(run.wd[step]),
         **{k: float(v) for k, v in stats.items()}, **{f"time/{k}": v for k, v in stages.items()},
         "flops_per_image": run.flops,
         **({"mfu": u} if (u := mfu(rate / ctx.world_size, run.flops, cfg.run.peak_tflops)) is not None else {}),
         **run.method.extra_metrics(), "nonfinite_steps": run.guard.total,
         **run.evaluator(done, run.student, views.globals_[: views.batch_size])}
    if not math.isfinite(m["loss"]) and ctx.rank == 0:
        print(f"[rob_ray] warning: student {run.name}: non-finite loss at step {done}", flush=True)
    return m


def _state(cfg: Config, ctx: TrainContext, runs: list[StudentRun], step: int, skipped: int) -> dict[str, Any] | None:
    """The checkpoint payload on rank 0 (None elsewhere): every student's entry, the first one's also at the
    top level (what single-student readers of a checkpoint look at). Called by every rank."""
    entries = {run.name: run.state(ctx.world_size, ctx.rank) for run in runs}
    if ctx.rank != 0:
        return None
    first = entries[runs[0].name]
    state = {k: first[k] for k in ("student", "optimizer", "method", "rng", "nonfinite")}
    if "method_ranks" in first:
        state["method_ranks"] = first["method_ranks"]
    state.update({"step": step, "skipped_images": skipped, "config": config_to_dict(cfg), "students": entries,
                  "world_size": ctx.world_size})
    return state


def _single_payload(payload: dict[str, Any], run: StudentRun) -> dict[str, Any]:
    """One student's state as a single-student run's checkpoint (its resolved config): `best_<name>/`."""
    entry = payload["students"][run.name]
    out = {k: v for k, v in entry.items() if k != "stopped"}
    out.update({"step": payload["step"], "skipped_images": payload["skipped_images"],
                "config": config_to_dict(run.cfg)})
    return out


def _sum_across_ranks(value: int, device: torch.device, world_size: int) -> int:
    from rob_ray.train.loop import _sum_across_ranks as total

    return total(value, device, world_size)
