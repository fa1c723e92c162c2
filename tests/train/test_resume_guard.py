"""Relaunching a run name with other model settings is refused in one line, before anything is
written; settings that do not shape the checkpoint (epochs, LR, workers) may change."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rob_ray.config import ConfigError, load_config, save_config
from rob_ray.train.resume import changed_keys, check_resumable
from tests.conftest import REPO

TINY = ["student.arch=test_resnet", "student.head.hidden_dim=32", "student.head.bottleneck_dim=8", "run.compile_teacher=false"]


def test_changed_keys_lists_only_differences_under_the_sections():
    old = {"student": {"arch": "a", "head": {"dim": 8}}, "optim": {"lr": 1, "optimizer": "adamw"}}
    new = {"student": {"arch": "b", "head": {"dim": 8, "extra": 1}}, "optim": {"lr": 2, "optimizer": "adamw"}}
    assert changed_keys(old, new) == ["student.arch: a -> b", "student.head.extra: (unset) -> 1"]
    assert changed_keys(old, new, ("optim",)) == ["optim.lr: 1 -> 2"]


def _started(tmp_path, extra=()):
    cfg = load_config(None, [*TINY, f"run.storage_path={tmp_path}", "run.name=r", *extra])
    return cfg, save_config(cfg, cfg.run_dir() / "config.yaml")


@pytest.mark.parametrize("change, shown", [
    ("student.arch=resnet18", "student.arch: test_resnet -> resnet18"),
    ("student.head.hidden_dim=64", "student.head.hidden_dim: 32 -> 64"),
    ("method.student_temp=0.2", "method.student_temp: 0.1 -> 0.2"),
    ("optim.optimizer=sgd", "optim.optimizer: adamw -> sgd"),
])
def test_model_changes_are_refused_and_the_old_config_is_kept(tmp_path, change, shown):
    cfg, saved = _started(tmp_path)
    before = saved.read_bytes()
    changed = load_config(None, [*TINY, f"run.storage_path={tmp_path}", "run.name=r", change])
    with pytest.raises(ConfigError) as err:
        check_resumable(changed, cfg.run_dir())
    msg = str(err.value)
    assert "\n" not in msg and shown in msg and "run 'r'" in msg and "new run.name" in msg
    assert saved.read_bytes() == before


def test_schedule_and_scaling_changes_resume(tmp_path):
    cfg, _ = _started(tmp_path)
    for change in ("optim.epochs=300", "optim.lr=0.1", "scaling.num_workers=3", "data.path=elsewhere"):
        check_resumable(load_config(None, [*TINY, f"run.storage_path={tmp_path}", "run.name=r", change]),
                        cfg.run_dir())
    check_resumable(cfg, tmp_path / "never_started")  # a new run: nothing to compare


def test_cli_refuses_before_ray_starts(tmp_path):
    _started(tmp_path)
    proc = subprocess.run(
        [sys.executable, "experiments/run.py", "train", "--dry-run", *TINY, "student.arch=resnet18",
         f"run.storage_path={tmp_path}", "run.name=r"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "student.arch: test_resnet -> resnet18" in lines[0], proc.stderr


def test_unreadable_old_config_is_named(tmp_path):
    cfg = load_config(None, [*TINY, f"run.storage_path={tmp_path}", "run.name=r"])
    cfg.run_dir().mkdir(parents=True)
    (cfg.run_dir() / "config.yaml").write_text("student: [unclosed\n")
    with pytest.raises(ConfigError, match=r"unreadable config\.yaml; choose a new run\.name"):
        check_resumable(cfg, cfg.run_dir())
