"""experiments/benchmark_accuracy.py: the rows' configs, the wall-time budget arithmetic, the curves rebuilt
from metrics.jsonl, the table's aggregation and targets (pure functions), and a `--smoke` run of two rows
end to end, resumed row by row. No accuracy is asserted: the smoke run measures nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DEMO_DATA, REPO

sys.path.insert(0, str(REPO / "experiments"))
import benchmark_accuracy as bench

from rob_ray.config import ConfigError


def _spec(smoke: bool = True, overrides: list[str] | None = None):
    return bench.load_spec(bench.DEFAULT_CONFIG, smoke, overrides or [], None)


def test_every_row_validates_and_rows_differ_only_where_they_say(tmp_path):
    spec = _spec(smoke=False)
    runs = bench.row_runs(spec, DEMO_DATA, tmp_path)
    keys = [r.key for r in runs]
    assert keys == ["rob_s0", "rob_s1", "feature_1view_s0", "feature_multicrop_s0", "scratch_s0", "scratch_s1", "kd_s0",
                    "fitted_s0", "fitted_s1"]
    by = {r.key: r.cfg for r in runs}
    assert by["fitted_s1"].seed == 1 and by["fitted_s1"].run.name == "fitted_s1"
    assert by["rob_s1"].seed == 1 and by["rob_s0"].method.name == "dino" and by["kd_s0"].method.name == "kd"
    assert by["feature_1view_s0"].augment.num_global == 1 and by["feature_1view_s0"].augment.num_local == 0
    assert by["feature_multicrop_s0"].augment.num_local == by["rob_s0"].augment.num_local == 4
    assert {c.student.arch for c in by.values()} == {"resnet10t"}  # the same student in every row
    assert by["rob_s0"].data.path == str(DEMO_DATA / "train") and by["rob_s0"].run.name == "rob_s0"
    assert [r.key for r in bench.row_runs(spec, DEMO_DATA, tmp_path, ["kd"])] == ["kd_s0"]
    with pytest.raises(ConfigError, match="--rows nope: no such row"):
        bench.row_runs(spec, DEMO_DATA, tmp_path, ["nope"])
    smoke = bench.row_runs(_spec(), DEMO_DATA, tmp_path)
    assert [r.seed for r in smoke] == [0] * 6 and smoke[0].cfg.data.max_images == 48
    # The headless row fits K=1000 prototypes (K=8 on --smoke's 48 images); no other row has a fit.
    fitted = {r.key: r.cfg for r in smoke}["fitted_s0"]
    assert by["fitted_s0"].teacher.prototypes.fit.k == 1000 and fitted.teacher.prototypes.fit.k == 8
    assert by["fitted_s0"].method.teacher_norm == "sinkhorn" and "teacher_temp" not in by["fitted_s0"].method.model_fields_set
    assert all(c.teacher.prototypes is None or c.teacher.prototypes.fit is None
               for k, c in by.items() if not k.startswith("fitted"))


def test_training_config_fills_the_budget_and_keeps_unset_fields_unset(tmp_path):
    spec = _spec(smoke=False)
    runs = {r.key: r for r in bench.row_runs(spec, DEMO_DATA, tmp_path)}
    cfg = bench.training_config(runs["fitted_s0"], spec, DEMO_DATA, 60.0, 9469)
    assert cfg.optim.epochs == 11 and cfg.optim.warmup_epochs == 1 and cfg.eval.online_knn_every_epochs == 1
    assert cfg.eval.online_knn_path == str(DEMO_DATA) and cfg.eval.online_knn_max_images == 500
    # Left unset, the prototype fit derives teacher_temp; a dump re-validated would pin it to 0.07.
    assert "teacher_temp" not in cfg.method.model_fields_set
    assert "teacher_temp" in runs["rob_s0"].cfg.method.model_fields_set  # the rob row sets its own
    one = bench.training_config(runs["rob_s0"], spec, DEMO_DATA, 1.0, 9469)
    assert one.optim.epochs == 1 and one.optim.warmup_epochs == 0  # warm-up shorter than the run


def test_a_bad_row_is_a_one_line_error_naming_it(tmp_path):
    spec = _spec(smoke=False)
    spec["rows"][1]["overrides"] = ["augment.num_global=0"]
    with pytest.raises(ConfigError, match=r"^row 'feature_1view': ") as err:
        bench.row_runs(spec, DEMO_DATA, tmp_path)
    assert "\n" not in str(err.value)


def test_epochs_fill_the_budget():
    assert bench.epochs_for_budget(1800, 60.0, 9469) == 11  # 108,000 images / 9,469 = 11.4
    assert bench.epochs_for_budget(1800, 60.0, 1000) == 108
    assert bench.epochs_for_budget(1, 60.0, 1000) == 1  # at least one


def test_calibrated_rate_weights_the_windows_after_the_first_by_time(tmp_path):
    lines = [{"step": 10, "img_per_s": 5.0}, {"step": 20, "img_per_s": 40.0}, {"step": 20, "online_knn_top1": 1.0},
             {"step": 30, "img_per_s": 80.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    # The first window (actor start) is left out; then 10 steps at 40 and 10 at 80 per s: 20 / (0.25 + 0.125).
    assert bench.calibrated_rate(path) == pytest.approx(20 / (10 / 40 + 10 / 80))
    path.write_text(json.dumps({"step": 4, "loss": 1.0}))
    with pytest.raises(RuntimeError, match="no img_per_s"):
        bench.calibrated_rate(path)


def test_wall_curve_rebuilds_training_time_from_each_window(tmp_path):
    lines = [{"step": 10, "img_per_s": 20.0}, {"step": 20, "img_per_s": 40.0, "online_knn_top1": 30.0},
             {"step": 20, "online_knn_top1": 31.0}, {"step": 40, "img_per_s": 80.0, "online_knn_top1": 50.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    # 10 steps x 8 images at 20 img/s = 4 s, then 2 s, then 20 x 8 / 80 = 2 s.
    assert bench.wall_curve(path, 8) == [(6.0, 30.0), (6.0, 31.0), (8.0, 50.0)]


def test_aggregate_means_seeds_and_targets_compare_rows():
    def res(row, seed, knn, linear):
        return {"row": row, "seed": seed, "label": row, "headline": {"knn": knn, "linear": linear},
                "images_seen": 100, "img_per_s": 10.0, "train_s": 10.0, "epochs": 1}

    table = bench.aggregate([res("rob", 0, 70.0, 72.0), res("rob", 1, 74.0, 74.0), res("scratch", 0, 40.0, 45.0),
                             res("teacher", None, 80.0, 84.0)])
    rob = next(r for r in table if r["row"] == "rob")
    assert rob["knn"] == (72.0, 2.0) and rob["linear"] == (73.0, 1.0) and rob["seeds"] == [0, 1]
    lines = bench.targets(table)
    assert "RoB k-NN / teacher k-NN = 90.0% (target >= 90%)" in lines
    assert "RoB k-NN - DINO from scratch = +32.0 points (target >= +25)" in lines
    assert lines[-1] == "not run yet: feature_1view, feature_multicrop, kd, fitted"

    table = bench.aggregate([res("rob", 0, 72.0, 75.0), res("teacher", None, 80.0, 84.0), res("kd", 0, 75.5, 78.0),
                             res("fitted", 0, 74.0, 77.0), res("feature_1view", 0, 73.0, 76.0)])
    lines = bench.targets(table)
    assert "fitted prototypes k-NN / teacher k-NN = 92.5% (no target: the headless path)" in lines
    assert "fitted prototypes linear / teacher linear = 91.7%" in lines
    assert "fitted prototypes k-NN - feature_1view = +1.0 points" in lines
    assert "RoB k-NN - supervised KD = -3.5 points (the paper's reference point, no target)" in lines
    assert lines[-1] == "not run yet: scratch, feature_multicrop"


@pytest.mark.ray
def test_smoke_runs_two_rows_end_to_end_and_resumes_row_by_row(tmp_path):
    out = tmp_path / "acc"
    cmd = [sys.executable, "experiments/benchmark_accuracy.py", "--smoke", "--data", str(DEMO_DATA), "--out", str(out),
           "--rows", "rob", "feature_1view"]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {p.stem: json.loads(p.read_text()) for p in (out / "rows").glob("*.json")}
    assert set(rows) == {"rob_s0", "feature_1view_s0", "untrained", "teacher"}
    rob = rows["rob_s0"]
    assert rob["epochs"] == 1 and rob["images_seen"] == 48 and rob["calibrated_img_per_s"] > 0
    assert rob["curve"] and all(0 <= k <= 100 for _, k in rob["curve"])  # online k-NN every epoch
    assert set(rob["headline"]) == {"knn", "linear", "1-shot", "5-shot"}
    md = (out / "benchmark.md").read_text()
    assert "| RoB-DINO from the teacher's logits | 0 | 1 | 48 |" in md and "not run yet: scratch" in md
    assert (out / "curves.png").stat().st_size > 0
    # A second invocation keeps what is done (no training) and still writes the table.
    mtime = (out / "rows" / "rob_s0.json").stat().st_mtime_ns
    again = subprocess.run([*cmd[:-2], "rob"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rob_s0: done before" in again.stdout and "calibrated" not in again.stdout
    assert (out / "rows" / "rob_s0.json").stat().st_mtime_ns == mtime
