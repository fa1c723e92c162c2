"""Sweeps that share the teacher: which spaces are grouped, how groups are built, ASHA rungs inside a group."""

from __future__ import annotations

import json

import pytest

from rob_ray.config import config_to_dict, load_config, student_configs
from rob_ray.tune.groups import (
    RungStopper,
    group_config,
    is_student_side,
    sample_configs,
    teacher_shared,
    trial_records,
)
from rob_ray.tune.outputs import write_trials_csv
from rob_ray.tune.space import check_space, resolve_trial_config


@pytest.mark.parametrize("key, student_side", [
    ("optim.lr", True), ("optim.weight_decay", True), ("student.arch", True), ("student.head.hidden_dim", True),
    ("method.student_temp", True), ("method.teacher_temp", True),  # applied in the loss: the teacher pass is the same
    ("method.name", False), ("optim.batch_size", False), ("optim.epochs", False), ("teacher.kind", False),
    ("augment.num_local", False), ("data.path", False), ("seed", False), ("scaling.num_workers", False),
])
def test_student_side_keys(key, student_side):
    assert is_student_side(key) is student_side


def test_a_student_side_sweep_is_grouped_and_a_teacher_side_one_is_not():
    cfg = load_config(None, [])
    assert teacher_shared(cfg, ["optim.lr", "method.student_temp", "student.head.hidden_dim"])[0]
    shared, why = teacher_shared(cfg, ["optim.lr", "augment.num_local"])
    assert not shared and "'augment.num_local' is run-wide" in why
    assert not teacher_shared(cfg, ["seed"])[0]
    assert not teacher_shared(load_config(None, ["tune.share_teacher=false"]), ["optim.lr"])[0]
    ema = load_config(None, ["method.name=dino_scratch"])
    assert "EMA teacher" in teacher_shared(ema, ["optim.lr"])[1]
    assert not teacher_shared(load_config(None, ["students=[{name: a}]"]), ["optim.lr"])[0]
    assert not teacher_shared(load_config(None, ["tune.search_alg=optuna"]), ["optim.lr"])[0]


def test_sample_configs_grid_times_samples_and_seeded():
    parsed = {"optim.lr": ("loguniform", (1e-4, 1e-2)), "method.student_temp": ("grid", [0.1, 0.2]),
              "student.head.hidden_dim": ("choice", [32, 64])}
    a = sample_configs(parsed, num_samples=3, seed=0)
    assert len(a) == 6 and a == sample_configs(parsed, num_samples=3, seed=0)
    assert a != sample_configs(parsed, num_samples=3, seed=1)
    assert [v["method.student_temp"] for v in a] == [0.1, 0.2] * 3
    assert all(1e-4 <= v["optim.lr"] <= 1e-2 and v["student.head.hidden_dim"] in (32, 64) for v in a)


def test_group_config_trains_each_sample_as_its_own_trial_would():
    base = config_to_dict(load_config(None, ["tune.search_space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}"]))
    samples = [("c000", {"optim.lr": 1e-3, "student.head.hidden_dim": 64}),
               ("c001", {"optim.lr": 2e-3, "method.student_temp": 0.2})]
    cfg = group_config(base, samples, "group_0", "/tmp/s")
    assert cfg.run.name == "group_0" and cfg.tune.stop_students_early
    for (name, scfg), (_, values) in zip(student_configs(cfg), samples):
        alone = resolve_trial_config(base, values)
        for section in ("student", "optim", "method", "teacher", "augment"):
            assert getattr(scfg, section) == getattr(alone, section), (name, section)
    fifo = group_config({**base, "tune": {**base["tune"], "scheduler": "fifo"}}, samples, "g", "/tmp/s")
    assert not fifo.tune.stop_students_early


def test_rung_stopper_keeps_the_better_half_at_each_rung():
    stop = RungStopper("online_knn_top1", "max", grace=1, reduction_factor=2, max_t=4)
    assert stop.rungs == [1, 2]
    row = lambda v, e: {"online_knn_top1": v, "epochs_done": e}  # noqa: E731
    assert stop({n: row(v, 0.5) for n, v in zip("abcd", (1, 2, 3, 4))}) == set()  # before the first rung
    assert stop({n: row(v, 1.0) for n, v in zip("abcd", (10, 40, 30, 20))}) == {"a", "d"}
    assert stop({"b": row(50, 1.5), "c": row(60, 1.5)}) == set()  # already recorded at rung 1
    assert stop({"b": row(50, 2.0), "c": row(60, 2.0)}) == {"b"}
    low = RungStopper("loss", "min", grace=1, reduction_factor=2, max_t=2)
    assert low({"a": {"loss": 1.0, "epochs_done": 1}, "b": {"loss": 2.0, "epochs_done": 1}}) == {"b"}


def test_trial_records_split_a_group_run_into_trials(tmp_path):
    rows = [{"step": 1, "epochs_done": 0.5, "c0/loss": 3.0, "c1/loss": 4.0, "loss": 3.0},
            {"step": 2, "epochs_done": 1.0, "c0/loss": 2.0, "c1/loss": 5.0, "c1/stopped": "stopped early at step 2"},
            {"step": 3, "epochs_done": 1.5, "c0/loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trials = trial_records(tmp_path, [("c0", {"optim.lr": 1e-3}), ("c1", {"optim.lr": 1e-2})], total_steps=3)
    assert [t["trial_id"] for t in trials] == ["trial_c0", "trial_c1"]
    assert [r["loss"] for r in trials[0]["history"]] == [3.0, 2.0, 1.0]
    assert [r["step"] for r in trials[1]["history"]] == [1, 2] and trials[1]["reason"].startswith("stopped early")
    csv = write_trials_csv(trials, "loss", "min", tmp_path / "trials.csv").read_text().splitlines()
    assert csv[1].startswith("trial_c0,0.001,1.0,1.0,1.5,3,False") and ",2,True," in csv[2]


def test_group_samples_pass_the_space_checks():
    base = config_to_dict(load_config(None, []))
    parsed = check_space(base, {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "student.head.hidden_dim": {"choice": [32, 64]}})
    samples = [(f"c{i}", v) for i, v in enumerate(sample_configs(parsed, 4, 0))]
    cfg = group_config(base, samples, "g", "/tmp/s")
    assert [e.name for e in cfg.students] == ["c0", "c1", "c2", "c3"]
