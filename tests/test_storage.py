"""Run storage on a URI (`file://` here: the same pyarrow code path as s3:// / gs://, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rob_ray.config import ConfigError, load_config
from rob_ray.data import scan_images
from rob_ray.storage import RunStorage, is_uri
from rob_ray.train import LocalContext
from rob_ray.train.loop import train_loop
from tests.conftest import tiny_overrides


@pytest.fixture(autouse=True)
def _staging_in_tmp_path(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "staging"))
    (tmp_path / "staging").mkdir()


def test_is_uri():
    assert is_uri("s3://bucket/runs") and is_uri("gs://b/r") and is_uri("file:///tmp/x")
    assert not is_uri("runs") and not is_uri("/shared/runs") and not is_uri("C:\\runs")


def test_local_path_is_the_run_folder_and_never_copies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = RunStorage("runs", "a")
    assert s.local_dir == tmp_path / "runs" / "a" and s.storage_path == str(tmp_path / "runs")
    (s.local_dir / "metrics.jsonl").write_text("{}\n")
    assert s.push() == [] and s.pull() == [] and s.download_latest_checkpoint() is None


def test_push_mirrors_changes_and_deletions(tmp_path):
    remote = tmp_path / "bucket"
    s = RunStorage(f"file://{remote}", "run1")
    assert s.local_dir != remote / "run1"  # a private staging folder
    (s.local_dir / "tensorboard").mkdir()
    (s.local_dir / "metrics.jsonl").write_text('{"step": 1}\n')
    (s.local_dir / "tensorboard" / "events.1").write_bytes(b"\x00\x01")
    (s.local_dir / "state.pt.tmp").write_text("half written")
    assert s.push() == ["metrics.jsonl", "tensorboard/events.1"]
    assert (remote / "run1" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (remote / "run1" / "state.pt.tmp").exists()
    assert s.push() == []  # nothing changed: nothing uploaded again

    with open(s.local_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 2}\n')
    (s.local_dir / "tensorboard" / "events.1").unlink()
    assert s.push() == ["metrics.jsonl"]
    assert (remote / "run1" / "metrics.jsonl").read_text().count("step") == 2
    assert not (remote / "run1" / "tensorboard" / "events.1").exists()


def test_close_uploads_then_removes_only_the_staging_folder(tmp_path):
    remote = tmp_path / "bucket"
    s = RunStorage(f"file://{remote}", "run1")
    staging = s.local_dir
    (staging / "knn.json").write_text("{}")
    s.close()
    assert not staging.exists() and (remote / "run1" / "knn.json").read_text() == "{}"
    s.close()  # twice is harmless
    local = RunStorage(str(tmp_path / "plain"), "run2")
    (local.local_dir / "metrics.jsonl").write_text("x")
    local.close()  # a plain path is the run folder itself: kept
    local.discard_staging()
    assert (tmp_path / "plain" / "run2" / "metrics.jsonl").read_text() == "x"


def test_pull_skips_ray_checkpoints_and_download_takes_newest_complete(tmp_path):
    run = tmp_path / "bucket" / "r"
    for step, complete in ((2, True), (10, True), (12, False)):
        d = run / f"checkpoint_step_{step:08d}"
        d.mkdir(parents=True)
        (d / ("state.pt" if complete else "meta.json")).write_text(str(step))
    (run / "metrics.jsonl").write_text("x\n")
    s = RunStorage(f"file://{tmp_path / 'bucket'}", "r")
    assert s.pull() == ["metrics.jsonl"]
    got = s.download_latest_checkpoint()
    assert got == s.local_dir / "checkpoint_step_00000010" and (got / "state.pt").read_text() == "10"
    assert s.push() == []  # pulled and downloaded files are not sent back


def test_bad_uri_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"run.storage_path = 'nosuch://x' is not a usable URI"):
        RunStorage("nosuch://x", "r")


def test_training_resumes_from_a_uri_storage(small_folder, tmp_path):
    """Two launches of the loop against file:// storage: metrics continue, checkpoints rotate remotely."""
    table = scan_images(small_folder)  # 48 images / batch 8 = 6 steps per epoch
    uri = f"file://{tmp_path / 'bucket'}"
    base = tiny_overrides(small_folder, tmp_path, "u") + [f"run.storage_path={uri}", "run.checkpoint_every_steps=2",
                                                          "run.num_to_keep=1"]
    for max_steps in (2, 4):
        cfg = load_config(None, [*base, f"optim.max_steps={max_steps}"])
        storage = RunStorage(cfg.run.storage_path, cfg.run.name)
        storage.pull()  # what fit() does first
        train_loop(cfg, LocalContext(table, storage, num_to_keep=1), len(table))
    remote = tmp_path / "bucket" / "u"
    steps = [json.loads(line)["step"] for line in (remote / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert sorted(p.name for p in (remote / "checkpoints").iterdir()) == ["step_00000004"]
    assert any(Path(remote / "tensorboard").iterdir())
