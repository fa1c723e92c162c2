"""Malformed inputs through the real entry point: exit 2, exactly one line on stderr, Ray never started.

Each row is an input that used to pass validation and fail later (in a worker, after Ray started,
after an epoch) or train on garbage (`optim.lr=.inf`, a random timm teacher).
"""

from __future__ import annotations

import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rob_ray.checks.inputs import sniff
from rob_ray.cli import main
from tests.conftest import DEMO_DATA

SMALL = [f"data.path={DEMO_DATA / 'train'}", "student.arch=test_resnet", "augment.global_size=32",
         "augment.local_size=16", "augment.num_local=2", "optim.batch_size=8", "scaling.num_workers=0",
         "run.compile_teacher=false"]


def _a_photo():
    return min(p for p in (DEMO_DATA / "train").rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "notes.parquet").write_text("id,label\n1,cat\n")  # a CSV named .parquet
    (d / "weights.pth").write_text("not weights")
    (d / "a_file").write_text("x")
    with zipfile.ZipFile(d / "model.zip", "w") as z:  # what a torch checkpoint looks like
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    (d / "noval" / "train" / "cat").mkdir(parents=True)
    (d / "noclass" / "train").mkdir(parents=True)
    (d / "noclass" / "val").mkdir()
    (d / "noclass" / "train" / "loose.jpg").write_bytes(_a_photo().read_bytes())
    pq.write_table(pa.table({"image": [b"x"]}), d / "ok.parquet")
    return d


# (argv after the command, needles that must be in the one stderr line)
TRAIN_CASES = [
    (["optim.lr=.inf"], ["optim.lr", "finite"]),
    (["optim.lr=.nan"], ["optim.lr", "finite"]),
    (["augment.global_scale=[0.4, .inf]"], ["augment.global_scale", "finite"]),
    (["seed=99999999999999999999"], ["seed", "less than or equal to 4294967295"]),
    (["seed=-1"], ["seed", "greater than or equal to 0"]),
    (["run.storage_path={d}/a_file/runs"], ["run.storage_path", "is a file, not a folder"]),
    (["run.storage_path=ftpx://host/runs"], ["unknown scheme 'ftpx://'", "s3://"]),
    (["data.eval_path={d}/noval"], ["data.eval_path", "has no val/ folder"]),
    (["eval.online_knn_every_epochs=1", "eval.online_knn_path={d}/noclass"], ["eval.online_knn_path", "no class folders"]),
    (["data.path={d}/notes.parquet"], ["data.path", "is text, not a Parquet file"]),
    (["teacher.kind=timm", "teacher.arch=test_resnet"], ["teacher.kind=timm", "no weights", "teacher.allow_random_init"]),
    (["teacher.checkpoint={d}/weights.pth"], ["teacher.checkpoint", "is text, not a weights file"]),
    (["scaling.use_gpu=true", "scaling.ray_address=local"], ["scaling.use_gpu=true", "no usable CUDA GPU",
                                                             "scaling.use_gpu=false"]),
    (["--config", "{d}/model.zip"], ["--config", "is a zip archive", "not a YAML text file"]),
]


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray (or training) fails the row loudly: every error must come before it."""
    import ray
    import torch

    import rob_ray.train.launch as launch

    def forbidden(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.setattr(launch, "init_ray", forbidden)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield
    assert not ray.is_initialized()


def _run(capsys, argv: list[str]) -> tuple[int, list[str]]:
    rc = main(argv)
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("args, needles", TRAIN_CASES, ids=[c[0][0].split("=")[0] + str(i) for i, c in enumerate(TRAIN_CASES)])
def test_malformed_inputs_exit_2_with_one_line_before_ray(files, tmp_path, capsys, no_ray, args, needles):
    args = [a.replace("{d}", str(files)) for a in args]
    opts = args[:2] if args[0] == "--config" else []  # options before the positional overrides
    argv = ["train", *opts, *SMALL, *args[len(opts):]]
    if not any(a.startswith("run.storage_path") for a in args):
        argv.append(f"run.storage_path={tmp_path / 'runs'}")
    rc, err = _run(capsys, argv)
    assert rc == 2 and len(err) == 1, err
    for needle in needles:
        assert needle.replace("{d}", str(files)) in err[0], err[0]
    assert not (tmp_path / "runs").exists()  # nothing written either


def test_explicit_random_timm_teacher_passes_the_checks(files, tmp_path, capsys, no_ray):
    rc = main(["train", "--dry-run", "teacher.kind=timm", "teacher.arch=test_resnet", "teacher.allow_random_init=true",
               *SMALL, f"run.storage_path={tmp_path / 'runs'}"])
    assert rc == 0, capsys.readouterr().err


def test_near_miss_command_is_named(capsys):
    rc, err = _run(capsys, ["trian", "--config", "x.yaml"])
    assert rc == 2 and err == ["error: unknown command 'trian' (did you mean 'train'?); commands: train, demo, tune, "
                               "teachers, fit-prototypes, eval, export, runtime-env (or key=value overrides for the demo)"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "demo", "tune", "teachers", "eval", "runtime-env"):
        assert f"    {cmd}" in out, out


def test_file_kinds_by_magic(files):
    assert sniff(files / "ok.parquet") == "a Parquet file"
    assert sniff(files / "model.zip").startswith("a zip archive")
    assert sniff(files / "notes.parquet") == "text"
    assert sniff(_a_photo()) == "a JPEG image"


TUNE_BASE = [*SMALL, "tune.metric=loss", "tune.mode=min"]
TUNE_CASES = [
    ([*SMALL, "tune.search_space={optim.lr: {loguniform: [1.0e-4, 1.0e-3]}}"],
     ["tune.metric = 'online_knn_top1'", "eval.online_knn_every_epochs", "tune.metric=loss"]),
    ([*SMALL, "tune.metric=online_linear_top1", "eval.online_knn_every_epochs=1", "eval.online_knn_path={d}",
      "tune.search_space={optim.lr: {loguniform: [1.0e-4, 1.0e-3]}}"],
     ["tune.metric = 'online_linear_top1'", "eval.online_linear=true"]),
    ([*TUNE_BASE], ["tune.search_space is empty"]),
    ([*TUNE_BASE, "tune.search_space={student.arch: {choice: [test_resnet, resnet_nonexistent]}}"],
     ["student.arch 'resnet_nonexistent' is not a timm model", "search_space allows student.arch='resnet_nonexistent'"]),
    ([*TUNE_BASE, "data.path={d}/missing", "tune.search_space={optim.lr: {uniform: [1.0e-4, 1.0e-3]}}"],
     ["data path '{d}/missing' does not exist"]),
    ([*TUNE_BASE, "tune.search_space={optim.lr: {choice: [1.0e-3, .inf]}}"], ["optim.lr", "finite"]),
]


@pytest.mark.parametrize("args, needles", TUNE_CASES, ids=[str(i) for i in range(len(TUNE_CASES))])
def test_tune_dry_run_checks_base_data_space_and_metric(files, tmp_path, capsys, no_ray, args, needles):
    rc, err = _run(capsys, ["tune", "--dry-run", *[a.replace("{d}", str(files)) for a in args],
                            f"run.storage_path={tmp_path / 'runs'}"])
    assert rc == 2 and len(err) == 1, err
    for needle in needles:
        assert needle.replace("{d}", str(files)) in err[0], err[0]


def test_tune_dry_run_of_a_good_sweep_passes(tmp_path, capsys, no_ray):
    rc = main(["tune", "--dry-run", *TUNE_BASE, "tune.search_space={optim.lr: {loguniform: [1.0e-4, 1.0e-3]}}",
               f"run.storage_path={tmp_path / 'runs'}"])
    assert rc == 0, capsys.readouterr().err
    assert "metric: loss" in capsys.readouterr().out


def test_gpu_shortfall_after_joining_a_cluster_gives_gpu_remedies(monkeypatch):
    import ray

    from rob_ray.config import ConfigError, load_config
    from rob_ray.train.launch import _check_cluster_fits

    cpu_node = {"CPU": 8.0, "memory": 1e10}
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": cpu_node}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: cpu_node)
    monkeypatch.setattr(ray, "available_resources", lambda: cpu_node)
    monkeypatch.delenv("ROB_RAY_AUTOSCALING", raising=False)
    with pytest.raises(ConfigError) as err:
        _check_cluster_fits(load_config(None, [*SMALL, "scaling.num_workers=1", "scaling.use_gpu=true"]))
    msg = str(err.value)
    assert "1 GPU (cluster has 0)" in msg and "add GPU nodes" in msg and "scaling.use_gpu=false" in msg
    assert "cpus_per_worker" not in msg  # no CPU remedies for a missing GPU
