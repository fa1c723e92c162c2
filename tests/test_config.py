"""Config: every kind of bad input becomes one line naming the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from rob_ray.config import ConfigError, load_config, save_config
from tests.conftest import REPO


def _err(overrides=None, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_defaults_are_dino_recipe():
    cfg = load_config()
    assert cfg.method.teacher_temp == 0.07 and cfg.method.student_temp == 0.1
    assert cfg.method.centering == "none" and cfg.method.pairing == "same_view"
    assert (cfg.augment.num_global, cfg.augment.num_local) == (2, 10)
    assert cfg.augment.global_scale == (0.4, 1.0) and cfg.augment.local_scale == (0.05, 0.4)


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["optim.lr=3e-4", "augment.global_scale=[0.3, 1.0]", "run.compile=true"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.augment.global_scale == (0.3, 1.0)
    assert cfg.run.compile is True


def test_unknown_key_lists_valid_keys_and_suggests():
    msg = _err(["optim.lrr=1"])
    assert "unknown key 'optim.lrr'" in msg and "did you mean 'lr'" in msg and "warmup_epochs" in msg


def test_unknown_section():
    assert "unknown key 'optimiser'" in _err(["optimiser.lr=1"])


def test_wrong_type_names_value():
    msg = _err(["optim.batch_size=abc"])
    assert msg.startswith("config error: optim.batch_size = 'abc'") and "integer" in msg


def test_out_of_range():
    assert "optim.lr = -1" in _err(["optim.lr=-1"]) and "greater than 0" in _err(["optim.lr=-1"])


def test_bad_choice_lists_allowed():
    msg = _err(["method.pairing=cross"])
    assert "method.pairing" in msg and "same_view" in msg and "swapped" in msg


def test_unknown_method():
    msg = _err(["method.name=byol"])
    assert "unknown method 'byol'" in msg and "dino" in msg


def test_scale_range_checked():
    assert "augment.global_scale" in _err(["augment.global_scale=[0.9, 0.2]"])
    assert "<= 1" in _err(["augment.local_scale=[0.1, 1.5]"])


def test_cross_field_local_larger_than_global():
    assert "augment.local_size (96) must not exceed augment.global_size (64)" in _err(["augment.global_size=64"])


def test_old_augment_device_key_names_its_replacement():
    assert "augment.device was replaced by augment.crops_on (worker | data_actors)" in _err(["augment.device=tpu"])


def test_override_without_equals():
    assert "not key=value" in _err(["optim.lr"])


def test_override_into_a_value():
    assert "seed: Input should be a valid integer" in _err(["seed.x=1"])
    assert "'x' is a value" in _err(["seed=1", "x=2", "x.y=3"])


def test_missing_and_malformed_files(tmp_path):
    assert "not found" in _err(path=tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    assert "not valid YAML" in _err(path=bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    assert "mapping" in _err(path=scalar)


def test_run_name_must_be_stable_identifier():
    assert "run.name" in _err(["run.name=a b/c"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-3", "student.arch=resnet34", "method.pairing=swapped"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path)
    assert again == cfg
    assert yaml.safe_load(path.read_text())["student"]["arch"] == "resnet34"


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1", "unknown key 'optim.lrr'"),
    ("optim.epochs=0", "optim.epochs = 0"),
    ("student.arch=not_a_model_xyz", "student.arch 'not_a_model_xyz' is not a timm model"),
    ("data.path=/nonexistent/images", "data path '/nonexistent/images' does not exist"),
    ("teacher.kind=nope", "teacher.kind 'nope' is unknown"),
])
def test_cli_user_errors_exit_2_with_one_line(override, needle, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), "train", "--dry-run", override,
                           f"run.storage_path={tmp_path}"],  # not the checkout's runs/ (a demo run may be there)
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_dry_run_prints_config_and_plan(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "run.py"), "train", "--dry-run",
                           "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", f"run.storage_path={tmp_path}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    plan = yaml.safe_load(out.split("# plan\n", 1)[1])
    assert plan["workers"] == 2 and plan["train_cpus"] == 1.0 and plan["teacher_prototypes"] == 1000
    assert plan["images"] == 1000 and plan["global_batch"] == 128
    assert yaml.safe_load(out.split("# plan\n", 1)[0])["scaling"]["num_workers"] == 2


def test_scientific_notation_is_a_float_everywhere(tmp_path):
    # PyYAML (YAML 1.1) would read these as strings; a search space would then be rejected.
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("optim: {lr: 1e-3, min_lr: 1E-6}\ntune:\n  search_space:\n    optim.lr: {loguniform: [1e-4, 3e-3]}\n")
    cfg = load_config(cfg_file, ["optim.weight_decay=5e-2"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.min_lr == 1e-6 and cfg.optim.weight_decay == 0.05
    assert cfg.tune.search_space["optim.lr"] == {"loguniform": [1e-4, 3e-3]}
    from rob_ray.config import config_to_dict
    from rob_ray.tune import check_space

    assert check_space(config_to_dict(cfg), cfg.tune.search_space)["optim.lr"] == ("loguniform", (1e-4, 3e-3))


def test_worker_ranges_and_the_global_batch():
    cfg = load_config(None, ["scaling.num_workers=2-4", "optim.batch_size=8"])
    s = cfg.scaling
    assert s.num_workers == (2, 4) and s.elastic and (s.min_workers, s.max_workers) == (2, 4)
    assert cfg.global_batch() == 32  # unset: batch_size x the range's maximum, fixed for the whole run
    assert load_config(None, ["scaling.num_workers=[1, 3]"]).scaling.num_workers == (1, 3)
    assert load_config(None, ["scaling.num_workers=3-3"]).scaling.num_workers == 3  # a one-point range is fixed
    fixed = load_config(None, ["scaling.num_workers=2", "optim.batch_size=8"])
    assert not fixed.scaling.elastic and fixed.global_batch() is None  # W x batch_size, as before
    assert load_config(None, ["scaling.num_workers=2", "optim.global_batch_size=24"]).global_batch() == 24


def test_relative_data_paths_become_absolute_for_the_workers(tmp_path, monkeypatch):
    """A path relative to the working directory must still name the same folder inside a Ray worker, which
    runs elsewhere; a path that exists only under the repository root resolves there; URIs are left alone."""
    from rob_ray.cli import _resolve_paths

    (tmp_path / "here" / "knn").mkdir(parents=True)
    (tmp_path / "repo" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here")
    cfg = load_config(None, ["data.path=data", "eval.online_knn_path=knn", "data.eval_path=s3://bucket/val"])
    out = _resolve_paths(cfg, tmp_path / "repo")
    assert out.eval.online_knn_path == str(tmp_path / "here" / "knn")
    assert out.data.path == str(tmp_path / "repo" / "data")
    assert out.data.eval_path == "s3://bucket/val"
