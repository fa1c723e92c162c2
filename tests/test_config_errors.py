"""Malformed configs: each gives one line naming the field, the value and what is allowed (exit code 2 at the CLI).

Most run in-process (`load_config` / `preflight`) for speed; a few go through the real CLI.
"""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rob_ray.checks.preflight import preflight
from rob_ray.config import ConfigError, load_config
from rob_ray.data.sources import DataSourceError
from rob_ray.models.students import StudentBuildError
from rob_ray.models.teachers.base import TeacherLoadError
from tests.conftest import DEMO_DATA, REPO

USER_ERRORS = (ConfigError, DataSourceError, TeacherLoadError, StudentBuildError)

# (overrides, substrings the one-line message must contain)
VALIDATION_CASES = [
    # wrong types
    (["optim.batch_size=abc"], ["optim.batch_size = 'abc'", "valid integer"]),
    (["optim.batch_size=1.5"], ["optim.batch_size = 1.5", "fractional part"]),
    (["optim.lr=[1]"], ["optim.lr = [1]", "valid number"]),
    (["seed=hello"], ["seed = 'hello'", "valid integer"]),
    (["run.compile=maybe"], ["run.compile = 'maybe'", "valid boolean"]),
    (["augment.global_scale=0.5"], ["augment.global_scale = 0.5", "valid tuple"]),
    (["augment.global_scale=[1]"], ["augment.global_scale = [1]", "needs exactly 2 values, got 1"]),
    (["augment.blur_prob=[1, 0.5]"], ["augment.blur_prob = [1, 0.5]", "needs exactly 3 values, got 2"]),
    (["augment.global_scale=[0.1, 0.5, 0.9]"], ["augment.global_scale", "at most 2 items"]),
    (["debug.fail_at_steps=3"], ["debug.fail_at_steps = 3", "valid list"]),
    (["data=3"], ["data = 3", "valid dictionary"]),
    (["method=dino"], ["method = 'dino'", "valid dictionary"]),
    # out of range / not one of the choices
    (["optim.lr=-1"], ["optim.lr = -1", "greater than 0"]),
    # elastic worker ranges
    (["scaling.num_workers=4-2"], ["scaling.num_workers", "min > max; write it as 2-4"]),
    (["scaling.num_workers=[3, 1]"], ["scaling.num_workers", "min > max; write it as 1-3"]),
    (["scaling.num_workers=0-2"], ["scaling.num_workers", "the minimum must be >= 1"]),
    (["scaling.num_workers=[0, 2]"], ["scaling.num_workers", "the minimum must be >= 1"]),
    (["scaling.num_workers=two-four"], ["scaling.num_workers", "range 'min-max'"]),
    (["scaling.num_workers=[1, 2, 3]"], ["scaling.num_workers", "two integers [min, max]"]),
    (["scaling.num_workers=-1"], ["scaling.num_workers", ">= 0"]),
    (["scaling.num_workers=1-3", "optim.global_batch_size=2"], ["optim.global_batch_size (2)", "every worker needs"]),
    (["augment.flip_prob=2"], ["augment.flip_prob = 2", "less than or equal to 1"]),
    (["augment.hue=0.9"], ["augment.hue = 0.9", "less than or equal to 0.5"]),
    (["augment.num_global=0"], ["augment.num_global = 0", "greater than or equal to 1"]),
    (["run.max_failures=-2"], ["run.max_failures = -2", "greater than or equal to -1"]),
    (["run.max_nonfinite_steps=0"], ["run.max_nonfinite_steps = 0", "greater than or equal to 1"]),
    (["run.precision=fp16"], ["run.precision = 'fp16'", "'auto', 'fp32' or 'bf16'"]),
    (["run.checkpoint_score_mode=best"], ["run.checkpoint_score_mode = 'best'", "'max' or 'min'"]),
    (["debug.fail_mode=kill"], ["debug.fail_mode = 'kill'", "'raise', 'exit' or 'hang'"]),
    (["debug.fail_at_steps=[0]"], ["debug.fail_at_steps.0 = 0", "greater than or equal to 1"]),
    (["data.format=csv"], ["data.format = 'csv'", "'auto', 'imagefolder' or 'parquet'"]),
    (["optim.optimizer=lamb"], ["optim.optimizer = 'lamb'", "'adamw' or 'sgd'"]),
    (["student.feature=cls"], ["student.feature = 'cls'", "'pre_logits' or 'pooled'"]),
    (["method.name=byol"], ["unknown method 'byol'", "'dino'"]),
    (["student.drop_path_rate=1"], ["student.drop_path_rate = 1", "less than 1"]),
    (["augment.ratio=[2, 1]"], ["augment.ratio = [2, 1]", "0 < low <= high"]),
    (["augment.blur_sigma=[2, 0.1]"], ["augment.blur_sigma = [2, 0.1]", "0 < low <= high"]),
    (["augment.solarize_prob=[0, 2, 0]"], ["augment.solarize_prob", "must be in [0, 1]"]),
    (["augment.local_scale=[0.1, 1.5]"], ["augment.local_scale", "high must be <= 1"]),
    (["run.name=a b/c"], ["run.name = 'a b/c'", "pattern"]),
    # unknown keys
    (["optim.lrr=1"], ["unknown key 'optim.lrr'", "did you mean 'lr'", "warmup_epochs"]),
    (["student.head.foo=1"], ["unknown key 'student.head.foo'", "valid keys here", "hidden_dim"]),
    (["debug.fail_at_step=[3]"], ["unknown key 'debug.fail_at_step'", "did you mean 'fail_at_steps'"]),
    (["run.checkpoint_score=loss"], ["unknown key 'run.checkpoint_score'", "checkpoint_score_metric"]),
    (["optimiser.lr=1"], ["unknown key 'optimiser'", "optim"]),
    # impossible combinations
    (["augment.global_size=64"], ["augment.local_size (96) must not exceed augment.global_size (64)"]),
    (["optim.epochs=5", "optim.warmup_epochs=10"], ["optim.warmup_epochs (10) must not exceed optim.epochs (5)"]),
    (["augment.device=tpu"], ["augment.device was replaced by augment.crops_on (worker | data_actors)"]),
    (["augment.num_local=0", "augment.num_global=1", "method.pairing=swapped"],
     ["method.pairing=swapped with one global and no local crop"]),
    (["debug.fail_rank=2", "scaling.num_workers=2"], ["debug.fail_rank (2) must be below the number of workers (2)"]),
    # the online evaluation actor (eval.online_knn_mode=actor)
    (["eval.online_knn_mode=thread"], ["eval.online_knn_mode = 'thread'", "'inline', 'async' or 'actor'"]),
    (["eval.online_knn_mode=actor", "eval.actor_cpus=0"], ["eval.actor_cpus = 0", "greater than 0"]),
    (["eval.online_knn_mode=actor", "eval.actor_gpus=-1"], ["eval.actor_gpus = -1", "greater than or equal to 0"]),
    (["eval.online_knn_mode=actor", "eval.actor_gpus=1.5"], ["eval.actor_gpus (1.5) above 1 must be a whole number",
                                                             "use 2 or a fraction below 1"]),
    (["eval.online_knn_mode=actor", "eval.actor_cpus=2.5"], ["eval.actor_cpus (2.5) above 1 must be a whole number"]),
    (["eval.actor_cpus=2"], ["eval.actor_cpus / eval.actor_gpus size the evaluation actor", "the mode is 'inline'",
                             "set eval.online_knn_mode=actor or remove them"]),
    (["eval.online_knn_mode=async", "eval.actor_gpus=1"], ["the mode is 'async'"]),
    # overrides that are not key=value
    (["optim.lr"], ["override 'optim.lr' is not key=value"]),
    (["seed=1", "x=2", "x.y=3"], ["'x' is a value, not a section"]),
]


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("overrides, needles", VALIDATION_CASES, ids=[" ".join(c[0]) for c in VALIDATION_CASES])
def test_validation_errors_name_field_value_and_allowed(overrides, needles):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    msg = _one_line(info.value)
    assert msg.startswith("config error: ")
    for needle in needles:
        assert needle in msg, msg


SMALL = [f"data.path={DEMO_DATA / 'train'}", "student.arch=test_resnet", "augment.global_size=32",
         "augment.local_size=16"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    (d / "empty").mkdir()
    (d / "notes.txt").write_text("x")
    pq.write_table(pa.table({"x": [1, 2]}), d / "table.parquet")
    return d


PREFLIGHT_CASES = [
    (["teacher.checkpoint={d}/missing.pth"], TeacherLoadError, ["teacher checkpoint", "missing.pth' not found"]),
    (["teacher.kind=nope"], TeacherLoadError, ["teacher.kind 'nope' is unknown", "efficientnet_lite0"]),
    (["teacher.kind=timm"], TeacherLoadError, ["teacher.kind=timm needs teacher.arch"]),
    (["student.arch=resnet_nonexistent"], StudentBuildError, ["student.arch 'resnet_nonexistent' is not a timm model"]),
    (["student.head.out_dim=10"], ConfigError, ["student.head.out_dim = 10", "prototype count is 1000", "set it to 1000"]),
    (["data.path={d}/nope"], DataSourceError, ["data path '{d}/nope' does not exist", "data.path"]),
    (["data.path={d}/empty"], DataSourceError, ["no images found under '{d}/empty'"]),
    (["data.path={d}/notes.txt"], DataSourceError, ["is a file", "data.format=parquet"]),
    (["data.path={d}/table.parquet"], DataSourceError, ["has no column 'image' (columns: x)", "data.parquet_image_column"]),
    (["optim.batch_size=5000"], ConfigError, ["optim.batch_size = 5000", "fewer than one global batch"]),
    (["data.eval_path={d}/nope"], ConfigError, ["data.eval_path = '{d}/nope' is not a folder", "train/ and val/"]),
]


@pytest.mark.parametrize("overrides, kind, needles", PREFLIGHT_CASES, ids=[c[0][0].split("=")[0] + str(i)
                                                                          for i, c in enumerate(PREFLIGHT_CASES)])
def test_preflight_errors_before_any_ray_work(files, overrides, kind, needles):
    cfg = load_config(None, SMALL + [o.format(d=files) for o in overrides])
    with pytest.raises(kind) as info:
        preflight(cfg)
    assert isinstance(info.value, USER_ERRORS)  # the CLI turns exactly these into exit code 2
    msg = _one_line(info.value)
    for needle in needles:
        assert needle.format(d=files) in msg, msg


def test_at_least_thirty_malformed_configs():
    assert len(VALIDATION_CASES) + len(PREFLIGHT_CASES) >= 30


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), "train", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("yaml_text, needle", [
    ("optim:\n  lr: fast\n", "config error: optim.lr = 'fast': Input should be a valid number"),
    ("run:\n  max_failures: 1\n  max_nonfinite: 3\n", "unknown key 'run.max_nonfinite' (did you mean 'max_nonfinite_steps'?)"),
    ("optim:\n  epochs: 2\n  warmup_epochs: 3\n", "optim.warmup_epochs (3) must not exceed optim.epochs (2)"),
    ("data:\n  path: [1, 2\n", "is not valid YAML at line"),
])
def test_cli_bad_config_files_exit_2_with_one_line(tmp_path, yaml_text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    # Not --dry-run: the error must come before any training (or run folder) starts.
    proc = _cli("--config", str(path), f"run.storage_path={tmp_path / 'runs'}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists() and "Traceback" not in proc.stderr


def test_config_error_is_reported_without_importing_torch():
    # "Fails in a second": reporting a config error must not pay for importing torch / timm.
    code = ("import sys; from rob_ray.cli import main; rc = main(['train', 'optim.lr=fast']); "
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert proc.stderr.strip() == "config error: optim.lr = 'fast': Input should be a valid number, unable to parse " \
        "string as a number"
