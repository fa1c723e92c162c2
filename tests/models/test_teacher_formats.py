"""Every teacher format rob_ray owns, built in the official key layout from random weights, loaded through
rob_ray and compared with an independent forward (torchvision / timm backbone + hand-written head maths):
DINO backbone-only `*_pretrain.pth` (ViT, ResNet-50), DINO ResNet-50 full checkpoint (BN in the head),
timm `.dino` / DINOv2 / DINOv3 names from local files, any state_dict with a key map, a separate head file;
and the one-line errors of wrong files."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from rob_ray.config import TeacherConfig
from rob_ray.models import TeacherLoadError, build_teacher
from rob_ray.models.teachers.dino import arch_from_dino_filename
from rob_ray.models.teachers.headless import student_out_dim
from tests.models.test_teachers import _dino_head_tensors, _reference_head


def _err(**kw) -> str:
    with pytest.raises(TeacherLoadError) as info:
        build_teacher(TeacherConfig(**kw))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_official_dino_file_names_map_to_timm_archs():
    assert arch_from_dino_filename("x/dino_deitsmall16_pretrain.pth") == "vit_small_patch16_224"
    assert arch_from_dino_filename("dino_vitbase8_pretrain_full_checkpoint.pth") == "vit_base_patch8_224"
    assert arch_from_dino_filename("dino_resnet50_pretrain.pth") == "resnet50"
    assert arch_from_dino_filename("checkpoint.pth") is None


def test_dino_vit_backbone_only_needs_an_explicit_head_or_objective(tmp_path):
    gen = torch.Generator().manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True).eval()
    path = tmp_path / "dino_vittiny16_pretrain.pth"  # official backbone-only layout: bare timm ViT keys
    torch.save(src.state_dict(), path)
    x = torch.randn(2, 3, 32, 32, generator=gen)

    teacher = build_teacher(TeacherConfig(kind="dino", checkpoint=str(path), arch="vit_tiny_patch16_224"))
    assert not teacher.has_ssl_head and teacher.num_prototypes == 0 and teacher.embed_dim == 192
    torch.testing.assert_close(teacher(x), src(x), rtol=1e-4, atol=1e-5)  # forward = the embedding
    assert student_out_dim("feature", teacher) == 192
    with pytest.raises(TeacherLoadError, match=r"no SSL head.*head_checkpoint.*method\.name=feature"):
        student_out_dim("dino", teacher)

    head = _dino_head_tensors(192, 48, 24, 17, False, gen)
    head_file = tmp_path / "head.pth"
    torch.save({f"head.{k}": v for k, v in head.items()}, head_file)  # DINO layout, `head.` prefix
    with_head = build_teacher(TeacherConfig(kind="dino", checkpoint=str(path), arch="vit_tiny_patch16_224",
                                            head_checkpoint=str(head_file)))
    assert with_head.num_prototypes == 17 and student_out_dim("dino", with_head) == 17
    torch.testing.assert_close(with_head(x), _reference_head(src(x), head, False), rtol=1e-4, atol=1e-5)

    wrong = _dino_head_tensors(100, 48, 24, 17, False, gen)
    torch.save(wrong, tmp_path / "wrong_head.pth")
    assert "expects 100-d features but the backbone gives 192-d" in _err(
        kind="dino", checkpoint=str(path), arch="vit_tiny_patch16_224", head_checkpoint=str(tmp_path / "wrong_head.pth"))


def _rn50_head(gen, k=30, hidden=64, bottleneck=16):
    """DINO's ResNet-50 head: 2 layers with BN -> Linear mlp.0, BN mlp.1, GELU mlp.2, Linear mlp.3; plain last_layer."""
    return {
        "mlp.0.weight": torch.randn(hidden, 2048, generator=gen) * 0.02, "mlp.0.bias": torch.randn(hidden, generator=gen) * 0.1,
        "mlp.1.weight": 1 + 0.1 * torch.randn(hidden, generator=gen), "mlp.1.bias": 0.1 * torch.randn(hidden, generator=gen),
        "mlp.1.running_mean": 0.1 * torch.randn(hidden, generator=gen),
        "mlp.1.running_var": 1 + torch.rand(hidden, generator=gen), "mlp.1.num_batches_tracked": torch.tensor(7),
        "mlp.3.weight": torch.randn(bottleneck, hidden, generator=gen) * 0.1,
        "mlp.3.bias": torch.randn(bottleneck, generator=gen) * 0.1,
        "last_layer.weight": torch.randn(k, bottleneck, generator=gen),
    }


def test_dino_resnet50_backbone_only_and_full_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(1)
    tv = torchvision.models.resnet50()
    tv.fc = torch.nn.Identity()  # DINO's ResNet-50 backbone: torchvision with fc removed
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    tv.eval()
    x = torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        emb = tv(x)

    pretrain = tmp_path / "dino_resnet50_pretrain.pth"  # arch from the official name
    torch.save(tv.state_dict(), pretrain)
    teacher = build_teacher(TeacherConfig(kind="dino", checkpoint=str(pretrain)))
    assert teacher.embed_dim == 2048 and teacher.patch_size is None and not teacher.has_ssl_head
    torch.testing.assert_close(teacher(x), emb, rtol=1e-4, atol=1e-4)

    head = _rn50_head(gen)
    sd = {f"module.backbone.{k}": v for k, v in tv.state_dict().items()}
    sd.update({f"module.head.{k}": v for k, v in head.items()})
    full = tmp_path / "dino_resnet50_pretrain_full_checkpoint.pth"
    args = argparse.Namespace(arch="resnet50", out_dim=30, use_bn_in_head=True, norm_last_layer=True)
    torch.save({"teacher": sd, "student": sd, "epoch": 800, "args": args, "optimizer": {}}, full)
    t_full = build_teacher(TeacherConfig(kind="dino", checkpoint=str(full)))
    assert t_full.num_prototypes == 30
    h = emb @ head["mlp.0.weight"].T + head["mlp.0.bias"]
    h = (h - head["mlp.1.running_mean"]) / torch.sqrt(head["mlp.1.running_var"] + 1e-5) * head["mlp.1.weight"] + head["mlp.1.bias"]
    z = F.gelu(h) @ head["mlp.3.weight"].T + head["mlp.3.bias"]
    expected = (z / z.norm(dim=1, keepdim=True)) @ head["last_layer.weight"].T
    torch.testing.assert_close(t_full(x), expected, rtol=1e-4, atol=1e-4)

    args.out_dim = 31  # args that disagree with the tensors: an inconsistent file
    torch.save({"teacher": sd, "args": args}, full)
    assert "args.out_dim = 31 but the head tensors give 30" in _err(kind="dino", checkpoint=str(full))


@pytest.mark.parametrize("arch, size", [("vit_small_patch14_dinov2.lvd142m", 28), ("vit_small_patch16_dinov3.lvd1689m", 32)])
def test_timm_dinov2_dinov3_from_local_safetensors(tmp_path, arch, size):
    """The hub file layout (timm keys, safetensors), placed locally: backbone-only teacher with timm's normalisation."""
    torch.manual_seed(2)
    src = timm.create_model(arch, num_classes=0, dynamic_img_size=True).eval()
    with torch.no_grad():
        for p in src.parameters():  # non-trivial values everywhere (layer-scale gammas start tiny)
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    teacher = build_teacher(TeacherConfig(kind="timm", arch=arch, checkpoint=str(path)))
    assert not teacher.has_ssl_head and teacher.embed_dim == 384
    assert teacher.mean == tuple(src.pretrained_cfg["mean"]) and teacher.patch_size == int(arch.split("patch")[1][:2])
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), src(x), rtol=1e-4, atol=1e-4)
    assert "does not fit timm model 'vit_tiny_patch16_224'" in _err(kind="timm", arch="vit_tiny_patch16_224",
                                                                  checkpoint=str(path))


def test_state_dict_with_key_map(tmp_path):
    gen = torch.Generator().manual_seed(3)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True).eval()
    head = _dino_head_tensors(192, 40, 20, 11, False, gen)
    sd = {f"encoder.{k}": v.contiguous() for k, v in src.state_dict().items()}
    sd.update({f"proj.{k}": v for k, v in head.items()})
    sd["decoder.weight"] = torch.zeros(3)
    path = tmp_path / "foreign.safetensors"
    save_file(sd, str(path))
    key_map = {r"^encoder\.": "backbone.", r"^proj\.": "head.", r"^decoder\..*": ""}
    teacher = build_teacher(TeacherConfig(kind="state_dict", arch="vit_tiny_patch16_224", checkpoint=str(path),
                                          key_map=key_map))
    x = torch.randn(2, 3, 32, 32, generator=gen)
    torch.testing.assert_close(teacher(x), _reference_head(src(x), head, False), rtol=1e-4, atol=1e-5)

    partial = {r"^encoder\.": "backbone.", r"^proj\.": "head."}
    msg = _err(kind="state_dict", arch="vit_tiny_patch16_224", checkpoint=str(path), key_map=partial)
    assert "1 keys map to neither backbone.* nor head.* (e.g. ['decoder.weight'])" in msg
    assert "invalid regex" in _err(kind="state_dict", arch="vit_tiny_patch16_224", checkpoint=str(path), key_map={"(": ""})
    assert "do not fit timm 'resnet18'" in _err(kind="state_dict", arch="resnet18", checkpoint=str(path), key_map=key_map)


class _Arbitrary:
    pass


def test_safe_loading_allow_list_and_refusals(tmp_path):
    src = timm.create_model("test_resnet", num_classes=0).eval()
    ok = tmp_path / "numpy_meta.pth"  # numpy scalars are data: allowed
    torch.save({"state_dict": src.state_dict(), "best_acc": np.float64(71.5), "epoch": np.int64(3)}, ok)
    teacher = build_teacher(TeacherConfig(kind="state_dict", arch="test_resnet", checkpoint=str(ok)))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(teacher(x), src(x))

    pickled = tmp_path / "object.pth"
    torch.save({"state_dict": src.state_dict(), "obj": _Arbitrary()}, pickled)
    msg = _err(kind="state_dict", arch="test_resnet", checkpoint=str(pickled))
    assert "arbitrary unpickling" in msg and "_Arbitrary" in msg and "re-save it" in msg
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    assert "truncated or not a PyTorch file" in _err(kind="state_dict", arch="test_resnet", checkpoint=str(garbage))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    assert "not a valid safetensors file" in _err(kind="state_dict", arch="test_resnet", checkpoint=str(bad_st))
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    assert "holds a Tensor, not a dict" in _err(kind="state_dict", arch="test_resnet", checkpoint=str(tensor_only))
