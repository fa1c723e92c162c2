"""The teacher catalogue: a data file that prints as a table; names resolve from the local cache; offline and
absent gives one line naming the exact file and folder."""

from __future__ import annotations

import pytest
import timm
import torch
import yaml

from rob_ray.cli import main
from rob_ray.config import TeacherConfig, validate_config
from rob_ray.models import TeacherLoadError, build_teacher
from rob_ray.models.teachers.catalogue import CATALOGUE_PATH, resolve_teacher_config


def test_catalogue_prints_every_entry(capsys):
    raw = yaml.safe_load(CATALOGUE_PATH.read_text())["teachers"]
    assert main(["teachers"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split("|")[1].strip(): line for line in out if line.startswith("| ") and "name" not in line[:8]}
    assert set(rows) == {e["name"] for e in raw}
    for e in raw:  # licences and prototype counts land in their row
        assert f" {e['licence']} " in rows[e["name"]] and f" {e['prototypes']} " in rows[e["name"]]
    assert "CC-BY-NC-4.0" in rows["msn_vitl16"] and "DINOv3 License" in rows["dinov3_vitb16"]
    assert main(["teachers", "dino_vitb16"]) == 0
    assert "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/" in capsys.readouterr().out


def test_name_resolves_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROB_RAY_CACHE", str(tmp_path))
    monkeypatch.setenv("ROB_RAY_OFFLINE", "1")
    src = timm.create_model("resnet50", num_classes=0).eval()
    cached = tmp_path / "teachers" / "dino_resnet50_pretrain.pth"
    cached.parent.mkdir()
    torch.save(src.state_dict(), cached)
    cfg = validate_config({"teacher": "dino_resnet50_backbone"}).teacher  # the bare-string form
    resolved = resolve_teacher_config(cfg)
    assert (resolved.kind, resolved.arch, resolved.checkpoint) == ("dino", "resnet50", str(cached))
    teacher = build_teacher(cfg)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(teacher(x), src(x), rtol=1e-4, atol=1e-4)
    explicit = tmp_path / "elsewhere.pth"  # an explicit checkpoint wins over the cache
    assert resolve_teacher_config(TeacherConfig(name="dino_resnet50_backbone", checkpoint=str(explicit))).checkpoint \
        == str(explicit)


def test_offline_missing_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ROB_RAY_CACHE", str(tmp_path))
    monkeypatch.setenv("ROB_RAY_OFFLINE", "1")
    with pytest.raises(TeacherLoadError) as info:
        build_teacher(TeacherConfig(name="dino_vitb16"))
    msg = str(info.value)
    assert "\n" not in msg and "dino_vitbase16_pretrain_full_checkpoint.pth" in msg
    assert str(tmp_path / "teachers") in msg and "offline" in msg
    assert "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/" in msg
    with pytest.raises(TeacherLoadError, match=r"not in the catalogue \(did you mean dino_vitb16"):
        build_teacher(TeacherConfig(name="dino_vitb161"))
    with pytest.raises(TeacherLoadError, match=r"kind=dino teacher but teacher\.kind = timm"):
        build_teacher(TeacherConfig(name="dino_vitb16", kind="timm"))
