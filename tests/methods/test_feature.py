"""The feature method: regresses the teacher *embedding*; only the student gets gradients; a full local run
with a backbone-only teacher sizes the student head from the teacher's embedding width."""

from __future__ import annotations

import timm
import torch

from rob_ray.config import StudentConfig, load_config
from rob_ray.data import scan_images
from rob_ray.losses.feature import FeatureLoss
from rob_ray.methods import Views, build_method
from rob_ray.models import build_student
from rob_ray.models.teachers.headless import HeadlessTeacher, student_out_dim
from rob_ray.train import LocalContext
from rob_ray.train.loop import train_loop
from tests.conftest import tiny_overrides


def test_feature_step_regresses_the_embedding_and_trains_only_the_student():
    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", num_classes=0)
    teacher = HeadlessTeacher(backbone, embed_dim=backbone.num_features, name="t")
    student = build_student(StudentConfig(arch="test_resnet"), out_dim=student_out_dim("feature", teacher))
    method = build_method(load_config(None, ["method.name=feature"]).method, teacher, student)
    g, lo = torch.randn(2 * 3, 3, 32, 32), torch.randn(2 * 3, 3, 16, 16)
    views = Views(g, lo, torch.zeros(3, dtype=torch.long), 3, 2)
    out = method(views, teacher, student, 0)
    expected = FeatureLoss()(student(views.crops()), teacher.embed(g), num_teacher_views=2, num_global=2)["loss"]
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    assert 0.0 <= method.extra_metrics()["feature/cosine"] + 1.0 <= 2.0


def test_local_run_with_backbone_only_teacher(small_folder, tmp_path):
    src = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "backbone.pth"
    torch.save(src.state_dict(), path)
    over = tiny_overrides(small_folder, tmp_path, "f") + [
        "teacher.kind=state_dict", "teacher.arch=test_resnet", f"teacher.checkpoint={path}", "method.name=feature",
        "optim.max_steps=2"]
    cfg = load_config(None, over)
    table = scan_images(small_folder)
    metrics = train_loop(cfg, LocalContext(table, tmp_path / "f", num_to_keep=1), len(table))
    assert metrics["step"] == 2 and 0.0 <= metrics["loss"] <= 2.0 and "feature/cosine" in metrics
