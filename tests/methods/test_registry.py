"""The method registry's contract: every config method is registered (and back), a malformed entry fails
at import with one clear line, losses state their teacher views explicitly, and the teacher-loading
errors the issue named are one line with the real cause."""

from __future__ import annotations

import importlib
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from rob_ray.cli import main
from rob_ray.config import _method_names
from rob_ray.errors import ConfigError, RobRayError, TeacherLoadError
from rob_ray.losses import DinoLoss, FeatureLoss, IbotLoss, KDLoss, MsnLoss, SwavLoss
from rob_ray.methods import get_method, list_methods
from rob_ray.methods.registry import MethodRegistryError, register_method
from tests.conftest import tiny_overrides
from tests.method_fixtures import classifier_teacher, dino_teacher


def test_registry_and_config_union_name_the_same_methods():
    assert set(list_methods()) == _method_names()
    for name in list_methods():
        entry = get_method(name)
        assert entry.config_class.model_fields["name"].default == name and entry.summary
    with pytest.raises(ConfigError, match="not registered; choose one of"):
        get_method("byol")


def test_an_entry_missing_a_piece_is_refused_with_its_name():
    good = get_method("dino")
    for piece in ("restore_student", "build_loss", "head_width"):
        with pytest.raises(MethodRegistryError, match=f"missing '{piece}'"):
            register_method(replace(good, name="broken", **{piece: None}))
    with pytest.raises(MethodRegistryError, match="must have name = 'other'"):
        register_method(replace(good, name="other"))
    with pytest.raises(MethodRegistryError, match="unknown needs"):
        register_method(replace(good, needs=("teacher_wings",)))
    with pytest.raises(MethodRegistryError, match="build_teacher"):
        register_method(replace(good, teacher="ema", build_teacher=None))


def test_a_malformed_method_module_fails_at_import(tmp_path, monkeypatch):
    (tmp_path / "broken_method.py").write_text(textwrap.dedent("""
        from dataclasses import replace
        from rob_ray.methods.registry import get_method, register_method
        register_method(replace(get_method("dino"), restore_student=None))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MethodRegistryError, match="method entry 'dino' is missing 'restore_student'"):
        importlib.import_module("broken_method")
    sys.modules.pop("broken_method", None)
    assert get_method("dino").restore_student is not None  # the registry kept the good entry


@pytest.mark.parametrize("call", [
    lambda: DinoLoss(4)(torch.randn(8, 4), torch.randn(4, 4), num_global=2),
    lambda: FeatureLoss()(torch.randn(8, 4), torch.randn(4, 4), num_global=2),
    lambda: MsnLoss()(torch.randn(8, 4), torch.randn(4, 4), num_global=2),
    lambda: SwavLoss(4, num_teacher_views=2)(torch.randn(8, 4), torch.randn(4, 4), num_global=2),
    lambda: KDLoss(1.0)(torch.randn(8, 4), torch.randn(4, 4), None, num_global=2),
    lambda: IbotLoss(lambda2=0.0)(torch.randn(8, 4), None, torch.randn(4, 4), None, None, num_global=2),
])
def test_no_loss_guesses_the_teacher_view_count(call):
    with pytest.raises(TypeError, match="num_teacher_views"):
        call()


def test_one_teacher_view_is_not_read_as_two_views_of_half_the_batch():
    s, t = torch.randn(6, 5), torch.randn(2, 5)  # B=2: 1 teacher view, 3 student views
    one = DinoLoss(5)(s, t, num_teacher_views=1, num_global=1)["loss"]
    two = DinoLoss(5)(s, t, num_teacher_views=2, num_global=2)["loss"]  # B=1: a different problem
    assert not torch.isclose(one, two)
    with pytest.raises(ValueError, match="built for 2 teacher view"):
        SwavLoss(5, num_teacher_views=2)(s, t, num_teacher_views=1, num_global=1)


def test_kd_teacher_takes_the_file_class_count(small_folder, tmp_path, capsys):
    over = [*tiny_overrides(small_folder, tmp_path), "method={name: kd}", *classifier_teacher(tmp_path)]
    assert main(["train", "--dry-run", *over]) == 0, capsys.readouterr().err
    assert "teacher_prototypes: 10" in capsys.readouterr().out  # 10 classes from the file, not timm's 1000


def test_a_dino_checkpoint_with_the_wrong_arch_is_one_line(small_folder, tmp_path, capsys):
    over = [*tiny_overrides(small_folder, tmp_path), *dino_teacher(tmp_path), "teacher.arch=vit_small_patch16_224"]
    assert main(["train", "--dry-run", *over]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dino_full_checkpoint.pth" in err and "vit_small_patch16_224" in err
    assert "cls_token: file [1, 1, 64] vs model [1, 1, 384]" in err and "set teacher.arch" in err


def test_user_errors_share_one_base():
    from rob_ray.data.sources import DataSourceError
    from rob_ray.errors import CheckpointError, EvalInputError, ExportError, StudentBuildError

    for cls in (ConfigError, DataSourceError, TeacherLoadError, StudentBuildError, CheckpointError, EvalInputError,
                ExportError):
        assert issubclass(cls, RobRayError)


def test_swav_own_prototypes_restore_exactly(tmp_path):
    from rob_ray.config import load_config
    from rob_ray.methods import build_models, restore_student
    from tests.method_fixtures import swav_teacher

    cfg = load_config(None, ["method={name: swav, prototypes: student}", "student.arch=test_resnet",
                             "student.head.hidden_dim=32", "student.head.bottleneck_dim=8", *swav_teacher(tmp_path)])
    teacher, student = build_models(cfg)
    assert student.head.prototypes.weight.shape == (teacher.num_prototypes, 8)  # K own prototypes of dim 8
    restored = restore_student(cfg, student.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored([x]), student.eval()([x]), rtol=0, atol=0)


def test_an_ema_run_is_evaluated_with_the_normalisation_it_trained_with():
    from rob_ray.config import load_config
    from rob_ray.methods.models import input_normalisation
    from rob_ray.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD

    cfg = load_config(None, ["method={name: dino_scratch}"])  # the default teacher section (Lite0, mean 0.5) is unused
    assert input_normalisation(cfg) == (IMAGENET_MEAN, IMAGENET_STD)
    assert input_normalisation(load_config(None, [])) == ((0.5,) * 3, (0.5,) * 3)
