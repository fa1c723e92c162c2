"""The teacher compiled for inference on CPU (`rob_ray.train.compiled`): when it applies, that it computes
what the eager teacher computes, that a machine that cannot compile falls back with a note, and that a
run with it trains and resumes bitwise."""

from __future__ import annotations

import contextlib

import pytest
import torch

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.methods import build_models
from rob_ray.train import LocalContext, load_state
from rob_ray.train.compiled import prepare_teacher, teacher_mode
from rob_ray.train.loop import train_loop
from tests.conftest import can_compile, tiny_overrides


@pytest.mark.parametrize(("compile_teacher", "compile_all", "is_cuda", "frozen", "expected"), [
    (None, None, False, True, "frozen"),  # the default on CPU: a RoB teacher is compiled as constants
    (None, None, False, False, "eager"),  # an EMA teacher changes every step: never constants
    (None, None, True, True, "compiled"),  # GPU: run.compile's default, lazily at the first step
    (None, False, False, True, "eager"),  # run.compile=false switches every compile off
    (None, True, False, False, "compiled"),
    (False, None, True, True, "eager"),
    (True, False, False, True, "frozen"),  # the specific switch wins over run.compile
    (True, None, False, False, "compiled"),
])
def test_teacher_mode(compile_teacher, compile_all, is_cuda, frozen, expected):
    assert teacher_mode(compile_teacher, compile_all, is_cuda=is_cuda, frozen_teacher=frozen) == expected


def _teacher():
    torch.manual_seed(0)
    teacher, _ = build_models(load_config(None, ["student.arch=test_resnet", "student.head.hidden_dim=32",
                                                 "student.head.bottleneck_dim=8"]))
    return teacher.eval().to(memory_format=torch.channels_last)


def test_frozen_teacher_computes_what_the_eager_teacher_computes():
    teacher = _teacher()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        eager = teacher(x)
    run, note = prepare_teacher(teacher, "frozen", torch.zeros_like(x), contextlib.nullcontext)
    if can_compile():
        assert note is None and run is not teacher  # compiled, and at set-up (the example batch)
    else:  # a machine without a C++ compiler: the eager teacher, and a note that says so
        assert run is teacher and "teacher runs eagerly" in note
    with torch.no_grad():
        got = run(x)
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)  # the same function, other rounding
    with torch.no_grad():
        assert torch.equal(teacher(x), eager)  # freezing left the module itself (evaluation, export) untouched


def test_a_machine_that_cannot_compile_gets_the_eager_teacher_and_a_note(monkeypatch):
    def no_compiler(*args, **kwargs):
        def fails(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return fails

    monkeypatch.setattr(torch, "compile", no_compiler)
    teacher = _teacher()
    run, note = prepare_teacher(teacher, "frozen", torch.zeros(2, 3, 32, 32), contextlib.nullcontext)
    assert run is teacher
    assert "teacher runs eagerly" in note and "RuntimeError: InvalidCxxCompiler: No working C++ compiler found" in note
    assert "run.compile_teacher=false" in note and "more detail" not in note  # one line


def test_a_run_with_the_frozen_teacher_learns_as_the_eager_one_and_resumes_bitwise(small_folder, tmp_path):
    table = scan_images(small_folder)

    def run(name: str, *extra: str) -> dict:
        base = [o for o in tiny_overrides(small_folder, tmp_path, name) if not o.startswith("run.compile_teacher")]
        cfg = load_config(None, [*base, "optim.epochs=1", "run.checkpoint_every_steps=3", *extra])
        assert cfg.run.compile_teacher is None or "run.compile_teacher=false" in extra
        return train_loop(cfg, LocalContext(table, tmp_path / name, num_to_keep=5), len(table))

    def student(name: str) -> dict:
        return load_state(sorted((tmp_path / name / "checkpoints").iterdir())[-1])["student"]

    def losses(name: str) -> list[float]:
        import json
        return [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    run("eager", "run.compile_teacher=false")
    full = run("frozen")  # the default on CPU
    run("resumed", "optim.max_steps=3")
    resumed = run("resumed")
    assert full["step"] == resumed["step"] == 6
    a, b = student("frozen"), student("resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)  # the compiled teacher is deterministic
    assert losses("frozen") == pytest.approx(losses("eager"), rel=1e-3)  # same targets up to float rounding


def test_calls_run_teacher_says_whether_the_method_runs_the_teacher_through_run_teacher():
    """The loop compiles `run_teacher` only for methods that call it: the flag must match what forward does."""
    import timm

    from rob_ray.config import StudentConfig
    from rob_ray.methods import Views, build_method
    from rob_ray.models import build_student
    from rob_ray.models.teachers.headless import HeadlessTeacher, student_out_dim

    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", num_classes=0)
    headless = HeadlessTeacher(backbone, embed_dim=backbone.num_features, name="t")
    feature = build_method(load_config(None, ["method.name=feature"]).method, headless,
                           build_student(StudentConfig(arch="test_resnet"), out_dim=student_out_dim("feature", headless)))
    cfg = load_config(None, ["student.arch=test_resnet", "student.head.hidden_dim=32", "student.head.bottleneck_dim=8"])
    dino = build_method(cfg.method, *build_models(cfg))
    views = Views(torch.randn(6, 3, 32, 32), torch.randn(6, 3, 16, 16), torch.zeros(3, dtype=torch.long), 3, 2)
    for method in (feature, dino):
        calls = []

        def counted(x, method=method, calls=calls):
            calls.append(x.shape)
            return method.teacher(x)

        method(views, counted, method.student, 0)
        assert method.calls_run_teacher() == bool(calls), type(method).__name__
    assert not feature.calls_run_teacher() and dino.calls_run_teacher()
