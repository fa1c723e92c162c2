"""The fitted head file, the cache and its keys, atomic writes, and a fit + train with a timm DINOv2
teacher end to end in-process (no Ray: engine=local, LocalContext)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.models import build_teacher
from rob_ray.models.teachers.base import TeacherLoadError
from rob_ray.models.teachers.headless import load_head_checkpoint
from rob_ray.prototypes import fit as fit_mod
from rob_ray.prototypes.fit import ensure_prototypes, fit_prototypes
from rob_ray.prototypes.head import head_state_from_prototypes, recommend_temperature, target_stats
from tests.conftest import tiny_overrides

DINOV2 = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def dinov2_file(tmp_path_factory) -> Path:
    """Random weights in the hub layout of timm's DINOv2 ViT-S/14 (a safetensors state_dict we write)."""
    torch.manual_seed(0)
    model = timm.create_model(DINOV2, num_classes=0)
    path = tmp_path_factory.mktemp("teachers") / "dinov2_vits14_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def dinov2_overrides(data: Path, storage: Path, ckpt: Path, name: str = "t", k: int = 6) -> list[str]:
    return [*tiny_overrides(data, storage, name), "augment.global_size=28", "augment.local_size=14",
            "teacher.kind=timm", f"teacher.arch={DINOV2}", f"teacher.checkpoint={ckpt}",
            f"teacher.prototypes.fit.k={k}", "teacher.prototypes.fit.images=40", "teacher.prototypes.fit.iterations=5",
            "teacher.prototypes.fit.engine=local", "teacher.prototypes.fit.batch_size=16"]


def test_head_file_loads_and_gives_cosine_softmax_targets(tmp_path):
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(50, 24, generator=g) * 3  # not unit: the head file normalises them
    path = tmp_path / "head.pth"
    torch.save(head_state_from_prototypes(protos), path)
    head = load_head_checkpoint(str(path), 24)  # the loader teacher.head_checkpoint uses
    assert head.out_dim == 50
    x = torch.randn(7, 24, generator=g) * 5
    saved = torch.load(path, weights_only=True)["last_layer.weight_v"]
    cos = F.normalize(x, dim=1) @ F.normalize(saved, dim=1).t()
    with torch.no_grad():
        logits = head(x)
    torch.testing.assert_close(logits, cos, rtol=1e-5, atol=1e-6)
    assert float(logits.abs().max()) <= 1 + 1e-6
    for tau in (0.04, 0.1):
        torch.testing.assert_close(F.softmax(logits / tau, 1), F.softmax(cos / tau, 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(TeacherLoadError, match="expects 24-d features but the backbone gives 32-d"):
        load_head_checkpoint(str(path), 32)


def test_temperature_recommendation_follows_the_top1_mass():
    g = torch.Generator().manual_seed(1)
    protos = F.normalize(torch.randn(32, 16, generator=g), dim=1)
    x = F.normalize(protos[torch.arange(200) % 32] + 0.5 * torch.randn(200, 16, generator=g), dim=1)
    stats = target_stats(x, protos)
    ent = [s["entropy"] for s in stats]
    assert ent == sorted(ent)  # hotter -> flatter targets
    tau = recommend_temperature(stats)
    direct = F.softmax((x @ protos.t()) / tau, 1).max(1).values.median()
    assert 0.02 <= tau <= 0.1 and abs(float(direct) - 0.5) < 0.12


def test_cache_hits_misses_and_keys(small_folder, tmp_path, dinov2_file, monkeypatch):
    calls = []
    real = fit_mod._embed
    monkeypatch.setattr(fit_mod, "_embed", lambda cfg, table, size: calls.append(len(table)) or real(cfg, table, size))
    cfg = load_config(None, dinov2_overrides(small_folder, tmp_path, dinov2_file))
    first = fit_prototypes(cfg, verbose=False)
    assert not first["cache_hit"] and calls == [40]
    meta = json.loads((Path(first["dir"]) / "fit.json").read_text())
    assert meta["k"] == 6 and meta["sample_size"] == 40 and meta["seed"] == 0 and meta["embed_dim"] == 384
    assert sum(meta["cluster_sizes"]["histogram"].values()) == 6 and meta["teacher"]["arch"] == DINOV2
    assert Path(first["dir"]).parent == tmp_path / "prototypes"  # <run.storage_path>/prototypes

    again = fit_prototypes(load_config(None, dinov2_overrides(small_folder, tmp_path, dinov2_file, name="other")),
                           verbose=False)
    assert again["cache_hit"] and again["head"] == first["head"] and calls == [40]  # another run reuses it

    k8 = fit_prototypes(load_config(None, dinov2_overrides(small_folder, tmp_path, dinov2_file, k=8)), verbose=False)
    assert not k8["cache_hit"] and k8["head"] != first["head"] and calls == [40]  # new K: refit, same embeddings

    fewer = load_config(None, [*dinov2_overrides(small_folder, tmp_path, dinov2_file), "data.max_images=44"])
    changed = fit_prototypes(fewer, verbose=False)
    assert not changed["cache_hit"] and changed["head"] != first["head"] and calls == [40, 40]  # other data: re-embed

    seed = load_config(None, [*dinov2_overrides(small_folder, tmp_path, dinov2_file), "teacher.prototypes.fit.seed=1"])
    assert fit_prototypes(seed, verbose=False)["head"] != first["head"] and len(calls) == 3


def test_interrupted_write_leaves_no_head_and_the_next_fit_is_clean(small_folder, tmp_path, dinov2_file, monkeypatch):
    cfg = load_config(None, dinov2_overrides(small_folder, tmp_path, dinov2_file))
    from rob_ray.prototypes import cache

    real_save = torch.save

    def dying_save(obj, f, *a, **kw):
        if "last_layer.weight_v" in obj:  # the head, not the embeddings
            f.write(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt("killed mid-write")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(cache.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        fit_prototypes(cfg, verbose=False)
    heads = [p for p in (tmp_path / "prototypes").glob("*-k6-*") if p.is_dir()]
    assert len(heads) == 1 and not (heads[0] / "head.pth").exists() and not (heads[0] / "fit.json").exists()
    monkeypatch.setattr(cache.torch, "save", real_save)
    out = fit_prototypes(cfg, verbose=False)
    assert not out["cache_hit"] and out["embeddings_cached"]  # the embeddings survived; the head is refitted
    assert load_head_checkpoint(out["head"], 384).out_dim == 6

    (Path(out["head"])).write_bytes(Path(out["head"]).read_bytes()[:-10])  # damaged afterwards: refit, never used
    assert not fit_prototypes(cfg, verbose=False)["cache_hit"]


def test_not_fitted_yet_is_one_line(tmp_path, dinov2_file, small_folder):
    cfg = load_config(None, dinov2_overrides(small_folder, tmp_path, dinov2_file))
    with pytest.raises(TeacherLoadError, match=r"not fitted yet; run `experiments/run\.py fit-prototypes"):
        build_teacher(cfg.teacher)


def test_dinov2_fit_then_train_end_to_end(small_folder, tmp_path, dinov2_file):
    from rob_ray.methods import build_method, build_models
    from rob_ray.train import LocalContext, load_state
    from rob_ray.train.loop import train_loop

    base = dinov2_overrides(small_folder, tmp_path, dinov2_file) + ["optim.max_steps=3", "method.teacher_norm=sinkhorn"]
    cfg = ensure_prototypes(load_config(None, base), verbose=False)
    assert cfg.teacher.prototypes.head and Path(cfg.teacher.prototypes.head).is_file()
    meta = json.loads((Path(cfg.teacher.prototypes.head).parent / "fit.json").read_text())
    assert cfg.method.teacher_temp == meta["recommended_teacher_temp"]  # unset in the config: derived
    teacher, student = build_models(cfg)
    assert teacher.num_prototypes == 6 and student.head.out_dim == 6 and "fitted prototypes" in teacher.name
    x = torch.randn(3, 3, 28, 28)
    protos = torch.load(cfg.teacher.prototypes.head, weights_only=True)["last_layer.weight_v"]
    expected = F.normalize(teacher.embed(x), dim=1) @ F.normalize(protos, dim=1).t()
    torch.testing.assert_close(teacher(x), expected, rtol=1e-4, atol=1e-5)
    build_method(cfg.method, teacher, student)

    table = scan_images(small_folder)
    ctx = LocalContext(table, tmp_path / "t", num_to_keep=1)
    metrics = train_loop(cfg, ctx, len(table))
    assert metrics["step"] == 3 and 0 < metrics["teacher_prototypes_used_frac"] <= 1
    saved = load_state(ctx.checkpoints.list()[-1])
    assert saved["config"]["teacher"]["prototypes"]["head"] == cfg.teacher.prototypes.head

    explicit = ensure_prototypes(load_config(None, [*base, "method.teacher_temp=0.05"]), verbose=False)
    assert explicit.method.teacher_temp == 0.05  # the user's choice wins


def test_a_dry_run_looks_in_the_cache_but_never_fits(small_folder, tmp_path, dinov2_file, monkeypatch):
    monkeypatch.setattr(fit_mod, "_embed", lambda *a: pytest.fail("a dry run must not embed"))
    cfg = load_config(None, dinov2_overrides(small_folder, tmp_path, dinov2_file))
    assert ensure_prototypes(cfg, fit_missing=False, verbose=False) is cfg  # miss: unchanged, nothing written
    assert not any((tmp_path / "prototypes").glob("*/head.pth"))
