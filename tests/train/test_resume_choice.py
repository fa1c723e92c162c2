"""Which checkpoint a relaunch continues from (no Ray): the newest complete one in the run folder,
recorded by Ray or not; logs cut back to it; folders Ray never tracked removed once superseded."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from rob_ray.train.checkpoint import RAY_SNAPSHOT, choose_resume, ray_recorded, save_state
from rob_ray.train.run_logs import trim_metrics_jsonl, trim_run_logs, trim_tensorboard


def _ckpt(run: Path, name: str, step: int) -> Path:
    return save_state(run / name, {"step": step, "w": torch.full((4,), float(step))}, {"step": step})


def _snapshot(run: Path, names: list[str]) -> None:
    rows = [{"version": 0, "checkpoint_dir_name": n, "metrics": {}} for n in names]
    (run / RAY_SNAPSHOT).write_text(json.dumps({
        "checkpoint_results": rows, "latest_checkpoint_result": rows[-1] if rows else None,
        "pending_training_results": [], "checkpoint_report_indices": list(range(len(rows)))}))


def test_a_complete_folder_ray_never_recorded_wins_over_ray_s_record(tmp_path):
    for s in (2, 4, 6):
        _ckpt(tmp_path, f"checkpoint_step_{s:08d}", s)
    _snapshot(tmp_path, ["checkpoint_step_00000002", "checkpoint_step_00000004"])  # killed before 6 was recorded
    choice = choose_resume(tmp_path, "checkpoint_step_00000004")
    assert choice.path.name == "checkpoint_step_00000006" and choice.state["step"] == 6
    assert "Ray's record ends at checkpoint_step_00000004" in choice.message()
    assert [p.name for p in choice.superseded] == ["checkpoint_step_00000006"]  # Ray would never delete it


def test_no_ray_record_at_all_still_resumes_from_the_folder(tmp_path):
    _ckpt(tmp_path, "checkpoint_step_00000002", 2)  # the first checkpoint; the driver died before Ray's record
    choice = choose_resume(tmp_path, None)
    assert choice.state["step"] == 2 and "Ray had recorded none" in choice.reason
    assert [p.name for p in choice.superseded] == ["checkpoint_step_00000002"]


def test_damaged_newest_is_skipped_and_reported(tmp_path, capsys):
    _ckpt(tmp_path, "checkpoint_step_00000004", 4)
    bad = _ckpt(tmp_path, "checkpoint_step_00000006", 6)
    data = (bad / "state.pt").read_bytes()
    (bad / "state.pt").write_bytes(data[: len(data) // 2])
    _snapshot(tmp_path, ["checkpoint_step_00000004", "checkpoint_step_00000006"])
    choice = choose_resume(tmp_path, "checkpoint_step_00000006")
    assert choice.state["step"] == 4 and "damaged" in choice.reason
    assert "checkpoint_step_00000006' is truncated" in capsys.readouterr().out
    assert choice.superseded == []  # both are Ray's: deleting one would break Ray's next restore


def test_unreadable_snapshot_deletes_nothing(tmp_path):
    _ckpt(tmp_path, "checkpoint_step_00000002", 2)
    (tmp_path / RAY_SNAPSHOT).write_text("{not json")
    assert ray_recorded(tmp_path) is None
    assert choose_resume(tmp_path, None).superseded == []


def test_nothing_on_disk_starts_from_zero(tmp_path):
    choice = choose_resume(tmp_path, None)
    assert choice.path is None and choice.state is None and "step 0" in choice.message()


def test_metrics_jsonl_is_cut_back_to_the_resumed_step(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)) + '{"step": 5, "lo')
    assert trim_metrics_jsonl(f, 2) == 3  # 3, 4 and the cut-short line
    assert [json.loads(x)["step"] for x in f.read_text().splitlines()] == [1, 2]
    assert trim_metrics_jsonl(f, 2) == 0


def _event_steps(folder: Path) -> list[int]:
    from tensorboardX.proto.event_pb2 import Event

    steps = []
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event()
            ev.ParseFromString(data[i + 12:i + 12 + n])
            if ev.summary.value:
                steps.append(ev.step)
            i += 12 + n + 4
    return steps


def test_tensorboard_events_after_the_resumed_step_are_dropped(tmp_path):
    from rob_ray.train.metrics import MetricsWriter

    w = MetricsWriter(tmp_path, 6, console=False)
    for s in range(1, 7):
        w.write({"step": s, "loss": 1.0 / s})
    w.close()
    assert _event_steps(tmp_path / "tensorboard") == [1, 2, 3, 4, 5, 6]
    assert trim_tensorboard(tmp_path / "tensorboard", 4) == 2
    assert _event_steps(tmp_path / "tensorboard") == [1, 2, 3, 4]  # still a readable file (CRCs intact)
    trim_metrics_jsonl(tmp_path / "metrics.jsonl", 4)
    w = MetricsWriter(tmp_path, 6, console=False)  # the relaunch's writer (same second) appends 5, 6 once
    for s in (5, 6):
        w.write({"step": s, "loss": 0.0})
    w.close()
    assert _event_steps(tmp_path / "tensorboard") == [1, 2, 3, 4, 5, 6]
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    assert trim_run_logs(tmp_path, 6) is None  # nothing to drop: no note


class _FakeRay:
    """Just enough of ray.train for RayTrainContext on rank 0: Ray's record and its persisting of reports."""

    def __init__(self, run_dir: Path, recorded: str | None) -> None:
        self.run_dir, self.recorded = run_dir, recorded

    def install(self, monkeypatch) -> None:
        import shutil
        from types import SimpleNamespace

        import ray.train
        import ray.train.torch

        ctx = SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1)
        monkeypatch.setattr(ray.train, "get_context", lambda: ctx)
        monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
        monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None if self.recorded is None else
                            SimpleNamespace(path=str(self.run_dir / self.recorded)))

        def report(metrics, checkpoint=None, checkpoint_dir_name=None):
            if checkpoint is not None:  # Ray copies the folder into the run folder, then records it
                shutil.copytree(checkpoint.path, self.run_dir / checkpoint_dir_name)
                self.recorded = checkpoint_dir_name
                _snapshot(self.run_dir, [checkpoint_dir_name])

        monkeypatch.setattr(ray.train, "report", report)


def test_ray_context_resumes_from_the_unrecorded_folder_trims_logs_then_removes_it(tmp_path, monkeypatch, capsys):
    from rob_ray.train.context import RayTrainContext

    run = tmp_path / "run"
    for s in (2, 4, 6):
        _ckpt(run, f"checkpoint_step_{s:08d}", s)
    _snapshot(run, ["checkpoint_step_00000002", "checkpoint_step_00000004"])  # killed before 6 was recorded
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 8)))
    _FakeRay(run, "checkpoint_step_00000004").install(monkeypatch)
    ctx = RayTrainContext(None, run)
    state = ctx.load_latest()
    out = capsys.readouterr().out
    assert state["step"] == 6 and torch.equal(state["w"], torch.full((4,), 6.0))
    assert "resuming from checkpoint_step_00000006 (step 6)" in out and "Ray's record ends at checkpoint_step_00000004" in out
    assert "dropped 1 metrics.jsonl row(s)" in out
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    ctx.save(8, {"step": 8, "w": torch.zeros(4)}, {"step": 8})
    assert "removed superseded checkpoint folder(s) Ray did not track: checkpoint_step_00000006" in capsys.readouterr().out
    # Ray's own folders stay for Ray to rotate (deleting one it recorded would break its next restore).
    assert sorted(p.name for p in run.glob("checkpoint_step_*")) == \
        ["checkpoint_step_00000002", "checkpoint_step_00000004", "checkpoint_step_00000008"]
