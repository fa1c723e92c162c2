"""iBOT and MSN teachers: official-layout checkpoints (random weights, written here) load through
rob_ray and match an independent forward (timm backbone + head maths by hand); bad files give
one-line errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rob_ray.config import TeacherConfig
from rob_ray.models import TeacherLoadError, build_teacher, list_teachers
from tests.ssl_checkpoints import write_ibot_checkpoint, write_msn_checkpoint


def _wn(g, v):
    return g * v / v.norm(dim=1, keepdim=True)


def _ibot_reference(backbone, head, x):
    """All tokens through Linear-GELU-Linear-GELU-Linear, L2 norm, then last_layer (CLS) / last_layer2 (patches)."""
    z = backbone.forward_features(x)
    for i, idx in enumerate((0, 2, 4)):
        z = z @ head[f"mlp.{idx}.weight"].T + head[f"mlp.{idx}.bias"]
        if i < 2:
            z = F.gelu(z)
    z = z / z.norm(dim=-1, keepdim=True)
    cls = z[:, 0] @ _wn(head["last_layer.weight_g"], head["last_layer.weight_v"]).T
    patch = z[:, 1:] @ _wn(head["last_layer2.weight_g"], head["last_layer2.weight_v"]).T
    return cls, patch


def _bn_eval(x, t, name):
    return (x - t[f"{name}.running_mean"]) / torch.sqrt(t[f"{name}.running_var"] + 1e-5) * t[f"{name}.weight"] \
        + t[f"{name}.bias"]


def _msn_reference(backbone, fc, prototypes, x):
    h = backbone.forward_features(x)[:, 0]
    h = F.gelu(_bn_eval(h @ fc["fc1.weight"].T + fc["fc1.bias"], fc, "bn1"))
    h = F.gelu(_bn_eval(h @ fc["fc2.weight"].T + fc["fc2.bias"], fc, "bn2"))
    z = h @ fc["fc3.weight"].T + fc["fc3.bias"]
    z = z / z.norm(dim=1, keepdim=True)
    return z, z @ (prototypes / prototypes.norm(dim=1, keepdim=True)).T


def test_registered():
    assert {"ibot", "msn"} <= set(list_teachers())


@pytest.mark.parametrize("shared, prefix", [(False, False), (True, True)])
def test_ibot_full_checkpoint_matches_independent_forward(tmp_path, shared, prefix):
    path = tmp_path / "checkpoint.pth"
    backbone, head = write_ibot_checkpoint(path, shared=shared, module_prefix=prefix)
    teacher = build_teacher(TeacherConfig(kind="ibot", checkpoint=str(path)))
    assert teacher.has_patch_head and teacher.num_prototypes == 40 and teacher.patch_size == 16
    x = torch.randn(2, 3, 64, 48)  # non-square, non-224: positions are interpolated as timm does
    with torch.no_grad():
        ref_cls, ref_patch = _ibot_reference(backbone, head, x)
    cls, patch = teacher.forward_with_patches(x)
    assert patch.shape == (2, 4 * 3, 40)
    torch.testing.assert_close(cls, ref_cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patch, ref_patch, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(teacher(x), ref_cls, rtol=1e-4, atol=1e-5)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_ibot_backbone_only_file_is_refused_in_one_line(tmp_path):
    backbone, _ = write_ibot_checkpoint(tmp_path / "full.pth")
    path = tmp_path / "checkpoint_teacher.pth"
    torch.save({"state_dict": backbone.state_dict()}, path)
    with pytest.raises(TeacherLoadError, match="no iBOT head") as info:
        build_teacher(TeacherConfig(kind="ibot", checkpoint=str(path)))
    assert "\n" not in str(info.value) and "checkpoint.pth" in str(info.value)
    with pytest.raises(TeacherLoadError, match=r"needs teacher\.checkpoint"):
        build_teacher(TeacherConfig(kind="ibot"))


def test_msn_checkpoint_matches_independent_forward(tmp_path):
    path = tmp_path / "vitt16.pth.tar"
    backbone, fc, prototypes = write_msn_checkpoint(path)
    # No arch given: width 192, depth 2, patch 16 and the 2 x 2 grid are read from the tensors.
    teacher = build_teacher(TeacherConfig(kind="msn", checkpoint=str(path)))
    assert teacher.num_prototypes == 30 and teacher.prototypes.shape == (30, 16) and teacher.embed_dim == 192
    torch.testing.assert_close(teacher.prototypes.norm(dim=1), torch.ones(30))
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref_z, ref_cos = _msn_reference(backbone, fc, prototypes, x)
    torch.testing.assert_close(teacher.project(x), ref_z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(teacher(x), ref_cos, rtol=1e-4, atol=1e-5)


def test_msn_bad_files_one_line(tmp_path):
    path = tmp_path / "m.pth.tar"
    write_msn_checkpoint(path)
    obj = torch.load(path, weights_only=True)
    del obj["prototypes"]
    torch.save(obj, tmp_path / "noproto.pth.tar")
    with pytest.raises(TeacherLoadError, match="no 'prototypes'") as info:
        build_teacher(TeacherConfig(kind="msn", checkpoint=str(tmp_path / "noproto.pth.tar")))
    assert "\n" not in str(info.value)
    with pytest.raises(TeacherLoadError, match="does not fit architecture"):
        build_teacher(TeacherConfig(kind="msn", checkpoint=str(path), arch="test_vit"))
