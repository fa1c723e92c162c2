"""Where the loop runs: a small context with a Ray Train and a local implementation, so the
whole training loop runs in a CPU unit test without a cluster (and on a GPU box without Ray)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rob_ray.data.mapper import MultiCropMapper
from rob_ray.data.policy import CropPolicy
from rob_ray.data.schedule import SampleSchedule
from rob_ray.data.sources import ImageTable
from rob_ray.storage import RunStorage
from rob_ray.train.checkpoint import (
    CheckpointError,
    LocalCheckpoints,
    checkpoint_dirs,
    checkpoint_step,
    choose_resume,
    latest_good,
    load_state,
    save_state,
    unused_checkpoint_name,
)
from rob_ray.train.run_logs import trim_run_logs

__all__ = ["LocalContext", "RayTrainContext", "TrainContext"]


class TrainContext:
    """Rank, device, the batch stream, checkpoint save/load and metric reporting."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    run_dir: Path
    storage: RunStorage | None = None

    def batches(self, policy: CropPolicy, schedule: SampleSchedule, start_step: int, end_step: int
                ) -> Iterator[dict[str, np.ndarray]]:
        raise NotImplementedError

    def load_latest(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def save(self, step: int, state: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        """Called by every rank; only rank 0 passes a state."""
        raise NotImplementedError

    def report(self, metrics: dict[str, Any]) -> None:
        """Called by every rank at the same steps."""

    def preemption_probe(self) -> Any:
        """A callable returning a preemption notice or None (every rank, same steps); None: no notices here."""
        return None

    def flush_outputs(self) -> None:
        """Mirror rank 0's files to a URI `run.storage_path` (no-op for a local folder)."""
        if self.storage is not None and self.rank == 0:
            self.storage.push()

    def _resumed_at(self, step: int) -> None:
        """Rank 0, before the loop logs again: logs written after the resumed step go."""
        if self.rank == 0 and (note := trim_run_logs(self.run_dir, step)):
            print(f"[rob_ray] {note}", flush=True)


def _run_folder(run_dir: str | Path | RunStorage) -> tuple[Path, RunStorage | None]:
    if isinstance(run_dir, RunStorage):
        return run_dir.local_dir, run_dir
    return Path(run_dir), None


class LocalContext(TrainContext):
    """Single process: checkpoints under `<run_dir>/checkpoints`; batches from Ray Data when
    `use_ray_data` (needs a running Ray), else straight from the mapper (no Ray at all)."""

    def __init__(self, table: ImageTable, run_dir: str | Path | RunStorage, *, device: str | torch.device = "cpu",
                 num_to_keep: int = 2, use_ray_data: bool = False, table_ref: Any = None,
                 num_actors: int = 1, cpus_per_actor: float = 1.0, prefetch_batches: int = 2,
                 actor_resources: dict[str, float] | None = None, max_batches_ahead: int | None = None) -> None:
        self.table, self.table_ref = table, table_ref
        self.run_dir, self.storage = _run_folder(run_dir)
        self.device = torch.device(device)
        self.checkpoints = LocalCheckpoints(self.run_dir, num_to_keep)
        self.use_ray_data = use_ray_data
        self.data_opts = {"num_actors": num_actors, "cpus_per_actor": cpus_per_actor,
                          "prefetch_batches": prefetch_batches, "actor_resources": actor_resources,
                          "max_batches_ahead": max_batches_ahead}
        self.reported: list[dict[str, Any]] = []

    def batches(self, policy, schedule, start_step, end_step):
        if self.use_ray_data:
            from rob_ray.data.stream import ray_batches

            return ray_batches(self.table_ref, policy, schedule, self.rank, start_step, end_step,
                               actor_nice=_actor_nice(self.device, self.data_opts), **self.data_opts)
        return MultiCropMapper(self.table, policy, schedule, self.rank).iter_local(start_step, end_step)

    def load_latest(self) -> dict[str, Any] | None:
        found = self.checkpoints.latest()
        state = None if found is None else found[1]
        if found is not None and self.rank == 0:
            print(f"[rob_ray] resuming from {found[0].name} (step {state['step']}): the newest complete checkpoint "
                  f"in {self.checkpoints.root}", flush=True)
        self._resumed_at(0 if state is None else int(state["step"]))
        return state

    def save(self, step, state, metrics):
        if state is not None:
            self.checkpoints.save(step, state, {"step": step, **_scalars(metrics)})
            self.flush_outputs()

    def report(self, metrics):
        self.reported.append(metrics)


class RayTrainContext(TrainContext):
    """Inside a Ray Train worker: rank/device from Ray, checkpoints through `ray.train.report`."""

    def __init__(self, table_ref: Any, run_dir: str | Path | RunStorage, *, num_actors: int = 1,
                 cpus_per_actor: float = 1.0, prefetch_batches: int = 2,
                 actor_resources: dict[str, float] | None = None, max_batches_ahead: int | None = None,
                 upload: str = "sync") -> None:
        import ray.train
        import ray.train.torch

        _quiet_report_logs()
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.storage = run_dir if isinstance(run_dir, RunStorage) else None
        if self.storage is not None and self.rank == 0:
            self.storage.pull()  # continue the run's metrics.jsonl on resume
        self.run_dir = self.storage.local_dir if self.storage is not None else Path(run_dir)
        self.table_ref = table_ref
        self.data_opts = {"num_actors": num_actors, "cpus_per_actor": cpus_per_actor,
                          "prefetch_batches": prefetch_batches, "actor_resources": actor_resources,
                          "max_batches_ahead": max_batches_ahead}
        self._superseded: list[Path] = []  # set by load_latest, emptied by the next save
        self.upload = upload

    def batches(self, policy, schedule, start_step, end_step):
        from rob_ray.data.stream import ray_batches

        return ray_batches(self.table_ref, policy, schedule, self.rank, start_step, end_step,
                           actor_nice=_actor_nice(self.device, self.data_opts), **self.data_opts)

    def load_latest(self) -> dict[str, Any] | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        remote = self.storage is not None and self.storage.is_remote
        # A run folder this worker cannot list (a node without the shared mount): Ray's record only.
        listable = ckpt is None or (self.run_dir / Path(ckpt.path).name).is_dir()
        if not remote and listable:
            # A local or shared run folder: the newest complete checkpoint in it, recorded by Ray or not.
            choice = choose_resume(self.run_dir, None if ckpt is None else Path(ckpt.path).name)
            if self.rank == 0:
                self._superseded = choice.superseded
                if choice.path is not None or choice.superseded:
                    print(choice.message(), flush=True)
            self._resumed_at(0 if choice.state is None else int(choice.state["step"]))
            return choice.state
        state = self._load_ray_record(ckpt)  # URI storage: only Ray's record is tried
        self._resumed_at(0 if state is None else int(state["step"]))
        return state

    def _load_ray_record(self, ckpt: Any) -> dict[str, Any] | None:
        if ckpt is None:
            return None
        try:
            with ckpt.as_directory() as d:
                return load_state(d)
        except CheckpointError as exc:
            print(f"[rob_ray] warning: {exc}; trying an older checkpoint of {self.run_dir}", flush=True)
        # Ray's newest is damaged (e.g. cut short by a crash): the previous good one from the run
        # folder (Ray keeps run.num_to_keep of them).
        bad = Path(ckpt.path).name
        found = latest_good([p for p in checkpoint_dirs(self.run_dir) if p.name != bad])
        if found is None:
            print("[rob_ray] warning: no readable checkpoint left; starting from scratch", flush=True)
            return None
        print(f"[rob_ray] resuming from {found[0]}", flush=True)
        return found[1]

    def _drop_superseded(self, saved_step: int) -> None:
        """Rank 0, after a newer checkpoint is on disk: folders Ray never tracked (a killed driver's
        last one, damaged ones) go; Ray deletes only what it recorded, by run.num_to_keep."""
        gone = [p for p in self._superseded if checkpoint_step(p)[0] <= saved_step or not p.exists()]
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        if gone:
            print(f"[rob_ray] removed superseded checkpoint folder(s) Ray did not track: "
                  f"{', '.join(p.name for p in gone)}", flush=True)
        self._superseded = [p for p in self._superseded if p not in gone]

    def save(self, step, state, metrics):
        import ray.train

        if state is None:
            ray.train.report(_scalars(metrics), checkpoint=None)
            return
        name = unused_checkpoint_name(self.run_dir, step)
        if self.upload == "async":
            # Ray uploads in the background and deletes the folder afterwards; it records the checkpoint
            # (the one resume uses) only once the upload finished, and the folder carries its checksums.
            from ray.train import CheckpointUploadMode

            tmp = tempfile.mkdtemp(prefix="rob_ray_ckpt_")
            save_state(tmp, state, {"step": step, **_scalars(metrics)})
            ray.train.report(_scalars(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=name, checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                             delete_local_checkpoint_after_upload=True)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                save_state(tmp, state, {"step": step, **_scalars(metrics)})
                ray.train.report(_scalars(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name)
        where = self.storage.uri if self.storage is not None else str(self.run_dir)
        print(f"[rob_ray] saved {name} in {where}", flush=True)
        self._drop_superseded(step)
        self.flush_outputs()

    def report(self, metrics):
        import ray.train

        ray.train.report(_scalars(metrics))

    def preemption_probe(self):
        from rob_ray.train.preemption import ray_preemption_probe

        return ray_preemption_probe()

    def close(self) -> None:
        """After a finished loop: a URI run's staging folder goes (rank 0 uploads what is left first)."""
        if self.storage is None:
            return
        if self.rank == 0:
            self.storage.close()
        else:  # other ranks write nothing there (a plain path's run folder is never removed)
            self.storage.discard_staging()


def _actor_nice(device: torch.device, data_opts: dict[str, Any]) -> int:
    """Data actors beside a CPU training worker run at a lower priority: the step's torch threads
    share those cores, and an actor that takes one mid-step stalls every parallel region of the
    step; decoding needs a few % of a core and Ray Data's queue absorbs the delay. Actors on their
    own data nodes (`actor_resources`) or beside a GPU worker keep the normal priority."""
    return 10 if device.type == "cpu" and not data_opts.get("actor_resources") else 0


def _quiet_report_logs() -> None:
    """Ray Train V2 logs every `ray.train.report` call, metrics dict and all, at INFO through a logger
    named after its file path, which `LoggingConfig` does not reach; the progress line says the same."""
    try:
        from ray.train.v2._internal.execution import context as ray_train_context
    except ImportError:  # a Ray without that module: nothing to quiet
        return
    logger = getattr(ray_train_context, "logger", None)
    if isinstance(logger, logging.Logger):
        logger.setLevel(logging.WARNING)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
