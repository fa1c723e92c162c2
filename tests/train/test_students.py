"""Multi-student runs (`students:`): each student equals its own single-student run, one teacher pass per step."""

from __future__ import annotations

import json

import pytest
import torch

from rob_ray.config import load_config, student_configs
from rob_ray.data import scan_images
from rob_ray.errors import CheckpointError, ConfigError
from rob_ray.train import LocalContext, load_state
from rob_ray.train.loop import train_loop
from rob_ray.train.students import SharedTeacher, pick_student
from tests.conftest import tiny_overrides

# Student a draws from torch's RNG every step (drop path); b has its own LR, temperature and head width.
TWO = ("students=[{name: a, student: {drop_path_rate: 0.2}}, "
       "{name: b, student: {head: {hidden_dim: 48}}, optim: {lr: 0.002, weight_decay: 0.1}, method: {student_temp: 0.2}}]")


def _run(cfg, table, run_dir):
    ctx = LocalContext(table, run_dir, num_to_keep=cfg.run.num_to_keep)
    return train_loop(cfg, ctx, len(table))


def _last(run_dir):
    return load_state(sorted((run_dir / "checkpoints").iterdir())[-1])


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)  # bitwise on CPU


def test_one_student_list_equals_the_single_student_run(small_folder, tmp_path):
    table = scan_images(small_folder)
    base = [*tiny_overrides(small_folder, tmp_path), "optim.max_steps=4", "student.drop_path_rate=0.2"]
    single = _run(load_config(None, [*base, "run.name=single"]), table, tmp_path / "single")
    multi = _run(load_config(None, [*base, "run.name=multi", "students=[{name: only}]"]), table, tmp_path / "multi")
    s, m = _last(tmp_path / "single"), _last(tmp_path / "multi")
    _same(s["student"], m["students"]["only"]["student"])
    _same(s["student"], m["student"])  # the first student also at the top level
    _same(s["method"], m["students"]["only"]["method"])
    assert torch.equal(s["rng"]["torch"], m["students"]["only"]["rng"]["torch"])
    assert multi["loss"] == single["loss"] == multi["only/loss"]
    assert (tmp_path / "multi" / "students.md").read_text().count("| only |") == 1


def test_two_students_each_equal_their_own_single_run(small_folder, tmp_path):
    table = scan_images(small_folder)
    base = [*tiny_overrides(small_folder, tmp_path), "optim.max_steps=4", "method.centering=ema"]
    cfg = load_config(None, [*base, "run.name=multi", TWO])
    metrics = _run(cfg, table, tmp_path / "multi")
    multi = _last(tmp_path / "multi")
    for name, scfg in student_configs(cfg):
        scfg.run.name = f"single_{name}"
        single = _run(scfg, table, tmp_path / scfg.run.name)
        alone = _last(tmp_path / scfg.run.name)
        _same(alone["student"], multi["students"][name]["student"])
        _same(alone["method"], multi["students"][name]["method"])  # the DINO centre too
        _same(alone["optimizer"]["state"][0], multi["students"][name]["optimizer"]["state"][0])
        assert single["loss"] == metrics[f"{name}/loss"] and single["lr"] == metrics[f"{name}/lr"]
    assert metrics["loss"] == metrics["a/loss"] != metrics["b/loss"]
    row = json.loads((tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"a/loss", "b/loss", "a/kl_teacher_student", "b/student_entropy", "img_per_s"} <= set(row)


def test_resume_restores_every_student(small_folder, tmp_path):
    table = scan_images(small_folder)
    base = [*tiny_overrides(small_folder, tmp_path), "run.checkpoint_every_steps=3", TWO]
    _run(load_config(None, [*base, "run.name=full", "optim.max_steps=6"]), table, tmp_path / "full")
    _run(load_config(None, [*base, "run.name=cut", "optim.max_steps=3"]), table, tmp_path / "cut")
    assert _last(tmp_path / "cut")["step"] == 3
    resumed = _run(load_config(None, [*base, "run.name=cut", "optim.max_steps=6"]), table, tmp_path / "cut")
    assert resumed["step"] == 6
    full, cut = _last(tmp_path / "full"), _last(tmp_path / "cut")
    for name in ("a", "b"):
        _same(full["students"][name]["student"], cut["students"][name]["student"])
        _same(full["students"][name]["method"], cut["students"][name]["method"])


def test_best_checkpoint_per_student_is_a_single_student_checkpoint(small_folder, tmp_path):
    table = scan_images(small_folder)
    cfg = load_config(None, [*tiny_overrides(small_folder, tmp_path, "best"), "optim.max_steps=2", TWO,
                             "run.checkpoint_score_metric=loss", "run.checkpoint_score_mode=min"])
    _run(cfg, table, tmp_path / "best")
    for name, scfg in student_configs(cfg):
        best = load_state(tmp_path / "best" / f"best_{name}")
        assert best["config"]["student"] == scfg.model_dump(mode="json")["student"] and "students" not in best
        assert best["config"]["students"] == []


def test_pick_student(small_folder, tmp_path):
    cfg = load_config(None, [*tiny_overrides(small_folder, tmp_path), TWO])
    state = {"student": {"w": 1}, "students": {"a": {"student": {"w": 1}}, "b": {"student": {"w": 2}}}}
    name, scfg, entry = pick_student(cfg, state)
    assert name == "a" and entry["student"] == {"w": 1}
    name, scfg, entry = pick_student(cfg, state, "b")
    assert entry["student"] == {"w": 2} and scfg.student.head.hidden_dim == 48 and scfg.optim.lr == 0.002
    with pytest.raises(CheckpointError, match="'c' is not a student of this run; choose one of a, b"):
        pick_student(cfg, state, "c")
    single = load_config(None, tiny_overrides(small_folder, tmp_path))
    assert pick_student(single, state)[2] is state
    with pytest.raises(CheckpointError, match="trained one student"):
        pick_student(single, state, "a")


def test_shared_teacher_computes_each_call_once():
    calls = []

    class Teacher(torch.nn.Module):
        mean = (0.5,)

        def forward(self, x):
            calls.append("forward")
            return x * 2

        def embed(self, x):
            calls.append("embed")
            return x + 1

    shared = SharedTeacher(Teacher())
    x = torch.ones(2, 3)
    assert shared(x) is shared(x) and shared.embed(x) is shared.embed(x)
    assert shared(x[:1]).shape == (1, 3)  # a slice is another input
    assert calls == ["forward", "embed", "forward"] and shared.mean == (0.5,)
    x.add_(1)  # changed in place: computed again
    assert torch.equal(shared(x), torch.full((2, 3), 4.0))
    shared.clear()
    shared(x)
    assert calls.count("forward") == 4


@pytest.mark.parametrize("override, message", [
    ("students=[{name: a}, {name: a}]", "name 'a' is used twice"),
    ("students=[{name: a, optim: {batch_size: 4}}]", "students[0] ('a'): optim.batch_size is run-wide"),
    ("students=[{name: a}, {name: b, student: {archh: x}}]", "students[1] ('b'): unknown key 'student.archh'"),
    ("students=[{name: a, method: {student_temp: 0}}]", "students[0] ('a'): method.student_temp = 0"),
    ("students=[{name: a, method: {name: kd}}]", "method.name is run-wide"),
])
def test_student_config_errors_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_ema_teacher_methods_refuse_students(small_folder, tmp_path):
    table = scan_images(small_folder)
    cfg = load_config(None, [*tiny_overrides(small_folder, tmp_path, "ema"), "method.name=dino_scratch",
                             "method.out_dim=32", "students=[{name: a}]"])
    with pytest.raises(ConfigError, match="no teacher pass to share"):
        _run(cfg, table, tmp_path / "ema")


def test_dropping_a_student_leaves_the_others_unchanged(small_folder, tmp_path):
    from rob_ray.train.students import train_students

    table = scan_images(small_folder)
    base = [*tiny_overrides(small_folder, tmp_path), "optim.max_steps=4", TWO]
    _run(load_config(None, [*base, "run.name=all"]), table, tmp_path / "all")
    asked = []

    def drop(students):
        asked.append(sorted(students))
        return {"b"} if "b" in students and students["b"]["step"] == 2 else set()

    cfg = load_config(None, [*base, "run.name=drop"])
    ctx = LocalContext(table, tmp_path / "drop")
    metrics = train_students(cfg, ctx, len(table), drop=drop)
    assert asked == [["a", "b"], ["a", "b"], ["a"], ["a"]]  # b is neither stepped nor asked after step 2
    assert "b/loss" not in metrics and "a/loss" in metrics
    full, dropped = _last(tmp_path / "all"), _last(tmp_path / "drop")
    _same(full["students"]["a"]["student"], dropped["students"]["a"]["student"])
    assert dropped["students"]["b"]["stopped"] == "stopped early at step 2"
    rows = [json.loads(line) for line in (tmp_path / "drop" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "b/loss" in r] == [1, 2]
    assert "| b |" in (tmp_path / "drop" / "students.md").read_text()


def test_eval_picks_a_student_of_a_multi_student_run(small_folder, tmp_path, capsys):
    import shutil

    from rob_ray.cli import main
    from tests.conftest import DEMO_DATA

    labelled = tmp_path / "labelled"
    for split, n in (("train", 6), ("val", 3)):
        for cls in sorted((DEMO_DATA / split).iterdir())[:3]:
            (labelled / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copy(f, labelled / split / cls.name / f.name)
    table = scan_images(small_folder)
    cfg = load_config(None, [*tiny_overrides(small_folder, tmp_path, "ev"), "optim.max_steps=2", TWO])
    _run(cfg, table, tmp_path / "ev")
    args = ["eval", "--checkpoint", str(tmp_path / "ev"), "--data", str(labelled), "--engine", "local",
            "--models", "student", "--protocol", "knn", "--k", "5"]
    assert main([*args, "--student", "b"]) == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "ev" / "eval_b" / "eval.json").read_text())
    assert res["student"] == "b" and list(res["models"]) == ["student b test_resnet (trained)"]
    assert main(args) == 0  # default: the first student
    assert json.loads((tmp_path / "ev" / "eval_a" / "eval.json").read_text())["student"] == "a"
    capsys.readouterr()
    assert main([*args, "--student", "zz"]) == 2
    assert "'zz' is not a student of this run; choose one of a, b" in capsys.readouterr().err


def test_dry_run_plan_has_memory_and_flops_per_student_and_total(small_folder, tmp_path):
    from rob_ray.checks.preflight import preflight

    plan = preflight(load_config(None, [*tiny_overrides(small_folder, tmp_path, "plan"), TWO])).plan
    rows = plan["students"]
    assert [r["name"] for r in rows] == ["a", "b"] and plan["student"] == "a=test_resnet, b=test_resnet"
    assert rows[0]["params_M"] > rows[1]["params_M"]  # b's head is narrower
    assert all(r["student_GFLOPs_per_image"] > 0 and r["memory_own_GiB"] > 0 for r in rows)
    t = plan["teacher_GFLOPs_per_image"]
    assert plan["students_total_GFLOPs_per_image"] == pytest.approx(
        t + sum(r["student_GFLOPs_per_image"] for r in rows), rel=1e-4)
    assert plan["students_separate_runs_GFLOPs_per_image"] == pytest.approx(
        plan["students_total_GFLOPs_per_image"] + t, rel=1e-4)  # the teacher counted once, not twice
    assert plan["memory_est_GiB"] == plan["students_memory_est_GiB"] < sum(r["memory_alone_GiB"] for r in rows)


def test_async_evaluation_of_two_students_matches_inline(small_folder, tmp_path):
    """eval.online_knn_mode=async in a multi-student run: each student's k-NN / linear-probe values at
    each eval step and its best checkpoint equal those of inline evaluation."""
    import shutil

    knn = tmp_path / "knn"
    for split in ("train", "val"):  # the held-out set: the same 48 photos as bank and queries
        shutil.copytree(small_folder, knn / split)
    table = scan_images(small_folder)
    keys = ("online_knn_top1", "online_linear_top1", "embedding_std")
    runs = {}
    for mode in ("inline", "async"):
        cfg = load_config(None, [*tiny_overrides(small_folder, tmp_path, mode), TWO, "optim.epochs=2",
                                 "eval.online_knn_every_epochs=1", f"eval.online_knn_path={knn}", "eval.k=5",
                                 f"eval.online_knn_mode={mode}", "eval.online_linear=true", "run.log_every_steps=2",
                                 "run.checkpoint_score_metric=online_knn_top1"])
        threads = torch.get_num_threads()
        _run(cfg, table, tmp_path / mode)
        torch.set_num_threads(threads)
        rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        runs[mode] = rows
    spe = 48 // 8
    for name in ("a", "b"):
        inline = {r["step"]: {k: r[f"{name}/{k}"] for k in keys} for r in runs["inline"] if f"{name}/{keys[0]}" in r}
        got = {r[f"{name}/eval_step"]: {k: r[f"{name}/{k}"] for k in keys}
               for r in runs["async"] if f"{name}/{keys[0]}" in r}
        assert sorted(inline) == [spe, 2 * spe] and got == inline
        best_i = load_state(tmp_path / "inline" / f"best_{name}")
        best_a = load_state(tmp_path / "async" / f"best_{name}")
        assert best_a["step"] == best_i["step"]
        _same(best_a["student"], best_i["student"])
