"""Ray Data wiring: one deterministic stream of augmented batches per training worker.

Each worker builds its own stream starting at its resume step (see `SampleSchedule`), so a
restarted worker group continues exactly where the checkpoint left off instead of replaying
from the start, which Train's dynamic `streaming_split` could not guarantee. This is the only
data module that imports Ray.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from rob_ray.data.mapper import MultiCropMapper
from rob_ray.data.multicrop import DRAW_FIELDS
from rob_ray.data.policy import CropPolicy
from rob_ray.data.schedule import SampleSchedule

__all__ = ["SamplePositions", "pace_streaming_executor", "paced", "ray_batches", "sample_bytes", "scheduling_period"]

# The shortest time one pass of Ray Data's scheduling loop may take in a training worker: while the
# consumer waits for its next batch (the executor's output queue is empty), and while it is fed.
SCHEDULING_MIN_PERIOD_S = 0.01
SCHEDULING_FED_PERIOD_S = 0.1


def paced(step: Callable[..., Any], min_period_s: float | Callable[..., float],
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Callable[..., Any]:
    """`step` that takes at least `min_period_s` per call (sleeping out the rest). `min_period_s` may be
    a function of the call's arguments, asked after the step (so it sees the state the step left)."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        t0 = clock()
        try:
            return step(*args, **kwargs)
        finally:
            period = min_period_s(*args, **kwargs) if callable(min_period_s) else min_period_s
            left = period - (clock() - t0)
            if left > 0:
                sleep(left)

    run.rob_ray_paced = True  # type: ignore[attr-defined]
    return run


def scheduling_period(executor: Any, *_: Any, starved_s: float = SCHEDULING_MIN_PERIOD_S,
                      fed_s: float = SCHEDULING_FED_PERIOD_S) -> float:
    """The next pass of `executor`'s loop comes after `starved_s` if its consumer waits (empty output
    queue; also if Ray no longer says), else after `fed_s`: a fed consumer needs a block only every
    step, and each pass is ~1 ms of Python that holds the GIL the training thread needs to dispatch
    its ops (measured here: the loop used 0.11 of the worker's 1.4 cores at one pass per 10 ms)."""
    idling = getattr(executor, "_consumer_idling", None)
    try:
        starved = idling is None or bool(idling())
    except Exception:  # a Ray internal: never let pacing break the stream
        starved = True
    return starved_s if starved else fed_s


_pace_lock = threading.Lock()


def pace_streaming_executor(starved_s: float = SCHEDULING_MIN_PERIOD_S, fed_s: float = SCHEDULING_FED_PERIOD_S
                            ) -> bool:
    """Stop Ray Data's scheduling loop from spinning in the training worker (False if Ray changed).

    When the consumer is the slow side (the training step; always, by design), the executor's output is
    backpressured: its `ray.wait` then returns at once on the throttled task and the loop re-runs its
    resource accounting back to back, holding a core in the *training* process (measured here, Ray
    2.60, 2 cores: 85 % of a core, and the demo at 25 instead of 55 img/s, in about half the runs).
    Paced (`scheduling_period`), the loop still dispatches every runnable task in each pass.
    """
    try:
        from ray.data._internal.execution.streaming_executor import StreamingExecutor
    except ImportError:
        return False
    with _pace_lock:
        step = getattr(StreamingExecutor, "_scheduling_loop_step", None)
        if step is None:
            return False
        if not getattr(step, "rob_ray_paced", False):
            StreamingExecutor._scheduling_loop_step = paced(
                step, functools.partial(scheduling_period, starved_s=starved_s, fed_s=fed_s))
    return True


class SamplePositions(Datasource):
    """Rows `id` = start..stop-1 in blocks of `rows_per_block`.

    Like `ray.data.range`, but read with `num_cpus=0`: on a small node a 1-CPU read task waits
    forever behind the training workers and augmentation actors that hold every CPU.
    """

    def __init__(self, start: int, stop: int, rows_per_block: int) -> None:
        self.start, self.stop, self.rows = start, stop, max(1, rows_per_block)

    def estimate_inmemory_data_size(self) -> int:
        return 8 * (self.stop - self.start)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        tasks = []
        for lo in range(self.start, self.stop, self.rows):
            hi = min(lo + self.rows, self.stop)
            meta = BlockMetadata(num_rows=hi - lo, size_bytes=8 * (hi - lo), input_files=None, exec_stats=None)
            tasks.append(ReadTask(lambda lo=lo, hi=hi: [pa.table({"id": np.arange(lo, hi)})], meta,
                                  per_task_row_limit=per_task_row_limit))
        return tasks


def sample_bytes(policy: CropPolicy) -> int:
    """Object-store bytes of one mapped sample (what `MultiCropMapper` ships for `policy.crops_on`)."""
    per_row = 64  # label, epoch, index, valid, size
    if policy.crops_on == "data_actors":
        pixels = policy.num_global * policy.global_size**2 + policy.num_local * policy.local_size**2
        return per_row + 3 * pixels
    return per_row + 3 * policy.image_size**2 + 8 * policy.num_views * DRAW_FIELDS


def ray_batches(
    table_ref: Any,
    policy: CropPolicy,
    schedule: SampleSchedule,
    rank: int,
    start_step: int,
    end_step: int,
    num_actors: int = 1,
    cpus_per_actor: float = 1.0,
    prefetch_batches: int = 2,
    actor_resources: dict[str, float] | None = None,
    actor_nice: int = 0,
    max_batches_ahead: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Stream batches for steps [start_step, end_step) of `rank` through Ray Data actors.

    `actor_resources` (e.g. `{"data_cpu": 1}`) pins the augmentation actors to nodes that
    advertise that custom resource: the CPU-only data nodes of `cluster/*.yaml`. `actor_nice`
    lowers the actors' CPU priority (a CPU training worker on the same cores comes first).
    `max_batches_ahead` caps the object store the stream may fill (None: Ray Data's own budget, half
    the store). Uncapped, a run whose samples fit decodes them all up front at full speed, beside the
    step, then stops: measured here (demo, 2 cores) its first minutes train at 45-58 img/s, the rest
    at 68-71 (62.6 on average); capped at 16 batches it trained at 54 throughout (the actor then works
    in short bursts that each preempt a step thread). So the default stays uncapped; a cap makes a run's
    rate what its first minutes show, which a benchmark that plans its length from them needs.
    """
    pace_streaming_executor()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # batch composition must not depend on actor timing
    b = schedule.rank_batch(rank)
    if max_batches_ahead is not None:
        limit = max_batches_ahead * b * sample_bytes(policy)
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(object_store_memory=limit)
    # Ray Data's issue detectors print a multi-line memory advice every 30 s per worker on the console;
    # the actors' memory (one decoded batch) is known and bounded, so the advice is noise here.
    if hasattr(ctx, "issue_detectors_config"):
        ctx.issue_detectors_config.detectors = []
    # One block per step: actors work on different steps in parallel, the order is kept.
    # concurrency=1: CPU-free tasks would otherwise all start at once, one process each.
    ds = ray.data.read_datasource(SamplePositions(start_step * b, end_step * b, b), num_cpus=0, concurrency=1)
    ds = ds.map_batches(
        MultiCropMapper,
        fn_constructor_kwargs={"table": [table_ref], "policy": policy, "schedule": schedule, "rank": rank,
                               "nice": actor_nice},
        batch_size=min(b, 32),
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus_per_actor,
        resources=dict(actor_resources) if actor_resources else None,
        zero_copy_batch=True,
    )
    yield from ds.iter_batches(batch_size=b, drop_last=True, prefetch_batches=prefetch_batches,
                               batch_format="numpy")
