"""Every compatibility failure has its one line naming both sides and the fix; the memory formula is checked
against parameter counts computed here; preflight refuses a headless teacher with a prototype method."""

from __future__ import annotations

import pytest
import timm
import torch

from rob_ray.checks.compat import (
    check_compatibility,
    check_feature_widths,
    check_head_width,
    check_method_needs,
    check_normalisation,
    check_patch_sizes,
)
from rob_ray.checks.memory import CUDA_OVERHEAD_GIB, MEMORY_BUDGET, check_fits, estimate_memory
from rob_ray.cli import main
from rob_ray.config import ConfigError, StudentConfig, load_config
from rob_ray.models import DINOHead, Student, Teacher, build_student
from rob_ray.models.teachers.headless import HeadlessTeacher
from rob_ray.precision import uses_bf16
from tests.conftest import tiny_overrides


def _teacher(arch="test_resnet", k=7, **kw):
    bb = timm.create_model(arch, num_classes=0).eval()
    return Teacher(bb, DINOHead(bb.num_features, k, hidden_dim=16, bottleneck_dim=8), num_prototypes=k,
                   embed_dim=bb.num_features, name=arch, **kw)


def test_head_width_messages():
    (m,) = check_head_width("dino", "dino:vit_b", 65536, 65536, 1000)
    assert "student.head.out_dim = 1000" in m and "65536" in m and "remove student.head.out_dim" in m
    (m,) = check_head_width("feature", "timm:dinov2", 384, 512, None, "embedding width")
    assert "outputs 512" in m and "embedding width is 384" in m
    (m,) = check_head_width("swav", "swav:resnet50", 128, 3000, None, "prototype dimension")
    assert "outputs 3000" in m and "prototype dimension is 128" in m
    assert check_head_width("dino", "t", 10, 10, None) == []


def test_patch_size_messages():
    (m,) = check_patch_sizes(100, 96, 2, teacher_patch=16, student_patch=None)
    assert "global_size = 100" in m and "teacher's patch size 16" in m and "use 96" in m
    msgs = check_patch_sizes(112, 40, 4, teacher_patch=14, student_patch=16)
    assert msgs == ["config error: augment.local_size = 40 is not a multiple of the student ViT's patch size 16; use 32"]
    assert check_patch_sizes(112, 40, 0, teacher_patch=14, student_patch=8) == []  # no locals used
    assert check_patch_sizes(100, 40, 2, teacher_patch=16, student_patch=16, teacher_pads=True, student_pads=True) == []


def test_normalisation_messages():
    imnet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    sat = ((0.43, 0.411, 0.296), (0.213, 0.156, 0.143))
    errs, warns = check_normalisation("timm:x", imnet, "dinov3_vitl16_sat", sat)
    assert len(errs) == 1 and "mean (0.485, 0.456, 0.406)" in errs[0] and "mean (0.43, 0.411, 0.296)" in errs[0]
    assert "dinov3_vitl16_sat" in errs[0] and not warns
    errs, warns = check_normalisation("lite0", ((0.5,) * 3, (0.5,) * 3), student_arch="resnet18", student_norm=imnet)
    assert not errs and "student.pretrained 'resnet18'" in warns[0] and "student.pretrained=false" in warns[0]
    assert check_normalisation("t", imnet, "dino_vitb16", imnet, "r", imnet) == ([], [])


def test_feature_width_messages():
    bad = _teacher()
    bad.embed_dim = 999  # a loader that read the wrong attribute
    student = build_student(StudentConfig(arch="test_resnet"), out_dim=7)
    x = torch.zeros(1, 3, 32, 32)
    msgs = check_feature_widths(bad, student, x, x)
    assert any("declares embed_dim 999" in m and "returns" in m for m in msgs)
    good = _teacher()
    sbb = timm.create_model("test_resnet", num_classes=0)
    wrong_student = Student(sbb, DINOHead(sbb.num_features + 1, 7, hidden_dim=16, bottleneck_dim=8))
    (m,) = check_feature_widths(good, wrong_student, x, x)
    assert f"reads {sbb.num_features + 1}-d" in m and f"gives {sbb.num_features}-d" in m


def test_method_needs_messages():
    cnn = build_student(StudentConfig(arch="test_resnet"), out_dim=7)
    vit = build_student(StudentConfig(arch="test_vit"), out_dim=7)
    t = _teacher()
    ibot_cnn = load_config(None, ["method.name=ibot", "student.arch=test_resnet"])
    ibot_vit = load_config(None, ["method.name=ibot", "student.arch=test_vit"])
    assert any("has_patch_head is false" in x for x in check_method_needs(ibot_vit, t, vit))
    t.has_patch_head = True
    (m,) = check_method_needs(ibot_cnn, t, cnn)
    assert "student.arch must be a ViT" in m and "'test_resnet'" in m and "vit_small_patch16_224" in m
    assert check_method_needs(ibot_vit, t, vit) == []
    swav = load_config(None, ["method.name=swav"])
    (m,) = check_method_needs(swav, t, cnn)
    assert "teacher.prototypes is unset" in m and "teacher.kind=swav" in m and "method.prototypes=student" in m
    assert check_method_needs(load_config(None, ["method.name=swav", "method.prototypes=student"]), t, cnn) == []
    t.prototypes = torch.randn(7, 8)
    msn = load_config(None, ["method.name=msn", "student.arch=test_vit"])
    assert check_method_needs(swav, t, cnn) == [] and check_method_needs(msn, t, vit) == []


def test_memory_estimate_formula_and_message(small_folder, tmp_path):
    t, s = _teacher(), build_student(StudentConfig(arch="test_resnet"), out_dim=7)
    kw = dict(global_size=64, local_size=32, num_global=2, num_local=4, num_prototypes=7, bf16=False)
    e1, e3 = estimate_memory(t, s, batch_size=1, **kw), estimate_memory(t, s, batch_size=3, **kw)
    t_bytes = sum(x.numel() * x.element_size() for x in (*t.parameters(), *t.buffers()))
    s_params = sum(p.numel() for p in s.parameters())
    s_buffers = sum(x.numel() * x.element_size() for x in s.buffers())
    # weights + grads + AdamW m and v in fp32, the teacher's weights, the CUDA context: independent of batch
    assert e1["fixed"] * 1024**3 == pytest.approx(t_bytes + 16 * s_params + s_buffers + CUDA_OVERHEAD_GIB * 1024**3)
    assert e3["total"] - e1["total"] == pytest.approx(2 * e1["per_image"])  # linear in batch
    big = estimate_memory(t, s, batch_size=1, **{**kw, "global_size": 128, "num_local": 0})
    small = estimate_memory(t, s, batch_size=1, **{**kw, "num_local": 0})
    assert big["student_activations"] > 3.5 * small["student_activations"]  # ~ pixel count
    assert uses_bf16("auto", True) and not uses_bf16("auto", False) and uses_bf16("bf16", False)
    assert not uses_bf16("fp32", True)
    cfg = load_config(None, [*tiny_overrides(small_folder, tmp_path), "scaling.use_gpu=true", "optim.batch_size=64"])
    fake = {**e3, "fixed": 1.0, "per_image": 0.5, "total": 1.0 + 0.5 * 64}
    with pytest.raises(ConfigError) as err:
        check_fits(cfg, t, s, fake, gpu_memory_gb=16.0)
    m = str(err.value)
    assert "needs ~33.0 GiB" in m and f"{MEMORY_BUDGET:.0%} of the GPU is 14.4 GiB" in m and "batch_size to 26" in m
    assert check_fits(cfg, t, s, e3, gpu_memory_gb=80.0)["gpu_memory_available_gib"] == pytest.approx(72.0)


def test_check_compatibility_on_a_config(small_folder, tmp_path):
    cfg = load_config(None, [*tiny_overrides(small_folder, tmp_path), "teacher.kind=timm", "teacher.arch=test_resnet"])
    from rob_ray.models import build_teacher

    teacher = build_teacher(cfg.teacher)
    student = build_student(cfg.student, out_dim=teacher.num_prototypes)
    assert check_compatibility(cfg, teacher, student).errors == []
    headless = HeadlessTeacher(timm.create_model("test_resnet", num_classes=0), embed_dim=256, name="bb")
    rep = check_compatibility(cfg, headless, student)
    assert "has no SSL head" in rep.errors[0] and "method.name=feature" in rep.errors[0]


def test_preflight_refuses_headless_teacher_with_dino(small_folder, tmp_path, capsys):
    path = tmp_path / "bb.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    over = [*tiny_overrides(small_folder, tmp_path), "teacher.kind=state_dict", "teacher.arch=test_resnet",
            f"teacher.checkpoint={path}"]
    assert main(["train", "--dry-run", *over]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no SSL head" in err and "teacher.head_checkpoint" in err
    assert main(["train", "--dry-run", *over, "method={name: feature}"]) == 0  # the demo config sets DINO keys
    out = capsys.readouterr().out
    assert "memory_est_GiB" in out and "memory check skipped: CPU run" in out
