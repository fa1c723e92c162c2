"""Every paper recipe in experiments/configs loads, keeps its published optimiser, builds at tiny size
(teacher files written here in the official layouts) and runs one training step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.train.loop import train_loop
from tests.conftest import REPO, tiny_overrides
from tests.helpers_ckpt import write_dino_checkpoint, write_swav_checkpoint, write_timm_classifier
from tests.train.test_loop_local import _FixedBatch

CONFIGS = REPO / "experiments" / "configs"
# recipe -> (optimizer, peak LR at the recipe's global batch, student arch at tiny size)
RECIPES = {
    "dino_vitb16_to_resnet18": ("sgd", 0.03 * 512 / 256, "test_resnet"),
    "dino_vits16_to_mobilenetv3l": ("adamw", 2e-3, "test_efficientnet"),
    "dino_vits16_to_vittiny": ("adamw", 2e-3, "test_vit"),
    "swav_rn50_to_resnet18": ("sgd", 0.03 * 512 / 256, "test_resnet"),
    "scratch_dino_resnet18": ("sgd", 0.03 * 512 / 256, "test_resnet"),
    "kd_resnet50_to_resnet18": ("sgd", 0.1 * 256 / 256, "test_resnet"),
}


def _teacher_overrides(cfg, tmp_path: Path) -> list[str]:
    kind = cfg.teacher.kind
    if cfg.method.name == "dino_scratch":
        return ["method.out_dim=64"]
    if kind == "dino":
        return ["teacher.arch=test_vit", f"teacher.checkpoint={write_dino_checkpoint(tmp_path / 'dino.pth')}"]
    if kind == "swav":
        return [f"teacher.checkpoint={write_swav_checkpoint(tmp_path / 'swav.pth')}"]
    if kind == "timm":
        return ["teacher.arch=test_resnet", f"teacher.checkpoint={write_timm_classifier(tmp_path / 'cls.pth', num_classes=1000)}"]
    raise AssertionError(f"no tiny teacher for kind {kind}")


def test_every_recipe_is_covered():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} - {"demo"} >= set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_one_step_at_tiny_size(name, small_folder, tmp_path):
    optimizer, peak_lr, tiny_student = RECIPES[name]
    full = load_config(CONFIGS / f"{name}.yaml")
    assert full.optim.optimizer == optimizer
    global_batch = full.optim.batch_size * max(full.scaling.num_workers, 1)
    assert abs(full.optim.lr * global_batch / 256 - peak_lr) < 1e-9
    overrides = tiny_overrides(small_folder, tmp_path, name) + _teacher_overrides(full, tmp_path) + [
        f"student.arch={tiny_student}", "scaling.use_gpu=false", "optim.max_steps=1", "optim.warmup_epochs=0"]
    cfg = load_config(CONFIGS / f"{name}.yaml", overrides)
    assert cfg.method.name == full.method.name and cfg.augment.policy == full.augment.policy
    table = scan_images(small_folder)
    metrics = train_loop(cfg, _FixedBatch(table, tmp_path / name), len(table))
    assert metrics["step"] == 1
    row = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["loss"] == row["loss"] and row["loss"] > 0  # finite (not NaN) and positive


# Every shipped train config (benchmark_accuracy.yaml is the benchmark's own format: its `train:` section is
# checked by tests/experiments). Teacher files are replaced by fixtures in the same official layout.
DRY_RUN_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "benchmark_accuracy")


def _fixture_teacher(cfg, folder: Path) -> list[str]:
    from tests.method_fixtures import KIND_TEACHERS

    if cfg.method.name == "dino_scratch" or cfg.teacher.kind == "efficientnet_lite0":  # no file / shipped offline
        return []
    return [o for o in KIND_TEACHERS[cfg.teacher.kind](folder) if not o.startswith("teacher.kind=")]


@pytest.mark.parametrize("name", DRY_RUN_CONFIGS)
def test_every_shipped_config_passes_dry_run_with_a_fixture_teacher(name, small_folder, tmp_path, capsys):
    from rob_ray.cli import main

    path = CONFIGS / f"{name}.yaml"
    full = load_config(path)
    vit = any(t in full.student.arch for t in ("vit", "deit"))
    over = [f"data.path={small_folder}", f"run.storage_path={tmp_path / 'runs'}",
            f"student.arch={'test_vit' if vit else 'test_resnet'}", "student.drop_path_rate=0",
            "student.head.hidden_dim=64", "student.head.bottleneck_dim=32", "optim.batch_size=4",
            "augment.global_size=32", "augment.local_size=16", "augment.num_local=2", "scaling.use_gpu=false",
            "eval.online_knn_every_epochs=0", *_fixture_teacher(full, tmp_path)]
    if full.method.name == "dino_scratch":
        over.append("method.out_dim=64")
    if full.method.name == "msn":
        over.append("method.projector_hidden_dim=32")
    assert main(["train", "--config", str(path), "--dry-run", *over]) == 0, capsys.readouterr().err
    assert "# plan" in capsys.readouterr().out
