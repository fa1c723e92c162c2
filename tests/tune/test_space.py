"""Search spaces: parsed, validated against the config before any trial starts, one-line errors."""

from __future__ import annotations

import pytest

from rob_ray.config import ConfigError, config_to_dict, load_config
from rob_ray.tune import check_space, resolve_trial_config
from rob_ray.tune.outputs import best_trial


def _base():
    return config_to_dict(load_config(None, ["augment.global_size=64", "augment.local_size=32"]))


def test_valid_space_and_trial_config():
    space = {"method.teacher_temp": {"uniform": [0.03, 0.1]}, "student.head.hidden_dim": {"choice": [1024, 2048]},
             "optim.lr": {"loguniform": [1e-4, 3e-3]}}
    parsed = check_space(_base(), space)
    assert parsed["optim.lr"] == ("loguniform", (1e-4, 3e-3))
    cfg = resolve_trial_config(_base(), {"optim.lr": 2e-3, "student.head.hidden_dim": 1024})
    assert cfg.optim.lr == 2e-3 and cfg.student.head.hidden_dim == 1024 and cfg.augment.global_size == 64


@pytest.mark.parametrize("space, needle", [
    ({"optim.lrr": {"uniform": [0.1, 0.2]}}, "tune.search_space key 'optim.lrr': unknown key 'optim.lrr'"),
    ({"optim.lr": {"gaussian": [0, 1]}}, "unknown distribution 'gaussian'"),
    ({"optim.lr": {"loguniform": [0, 1]}}, "need 0 < low < high"),
    ({"optim.lr": {"uniform": [0.3, 0.1]}}, "low < high"),
    ({"optim.lr": [0.1, 0.2]}, "must be one of"),
    ({"optim.lr": {"choice": []}}, "non-empty list"),
    ({"augment.local_size": {"choice": [32, 128]}}, "must not exceed augment.global_size"),
    ({"optim.batch_size": {"randint": [-4, 8]}}, "optim.batch_size = -4"),
])
def test_bad_spaces_fail_before_compute(space, needle):
    with pytest.raises(ConfigError) as info:
        check_space(_base(), space)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_best_trial_uses_best_seen_value():
    trials = [{"params": {"a": 1}, "history": [{"m": 0.5}, {"m": 0.9}, {"m": 0.2}]},
              {"params": {"a": 2}, "history": [{"m": 0.8}]},
              {"params": {"a": 3}, "history": [{"loss": 1.0}]}]
    assert best_trial(trials, "m", "max")["params"] == {"a": 1}
    assert best_trial(trials, "m", "min")["params"] == {"a": 1}
    assert best_trial(trials, "nope", "max") is None


@pytest.mark.parametrize("name", ["sweep_demo", "sweep_recipe_imagenette", "sweep_dino_vits16_to_vittiny"])
def test_shipped_sweep_configs_validate(name):
    from tests.conftest import REPO

    cfg = load_config(REPO / "experiments" / "configs" / f"{name}.yaml")
    parsed = check_space(config_to_dict(cfg), cfg.tune.search_space)
    assert "optim.lr" in parsed and cfg.tune.metric == "online_knn_top1" and cfg.eval.online_knn_every_epochs >= 1
