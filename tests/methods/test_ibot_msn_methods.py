"""RoB-iBOT and RoB-MSN steps: the teacher sees the unmasked globals, the corruption reaches the
student, config errors are one line, the recipes run at tiny size, the loss falls on a fixed batch,
and a resumed run continues exactly (masks included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rob_ray.config import ConfigError, TeacherConfig, load_config
from rob_ray.data import scan_images
from rob_ray.methods import Views, build_method, build_models
from rob_ray.models import build_teacher
from rob_ray.models.projectors import MSNProjector
from rob_ray.train import LocalContext, load_state
from rob_ray.train.loop import train_loop
from tests.conftest import REPO, tiny_overrides
from tests.ssl_checkpoints import write_ibot_checkpoint, write_msn_checkpoint
from tests.train.test_loop_local import _FixedBatch

RECIPES = {"ibot": REPO / "experiments/configs/ibot_vitb16_to_vits16.yaml",
           "msn": REPO / "experiments/configs/msn_vitl16_to_vittiny.yaml"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ssl")
    write_ibot_checkpoint(root / "checkpoint.pth", k=32, hidden=48, bottleneck=24)
    write_msn_checkpoint(root / "msn.pth.tar", timm_arch="test_vit", k=24, hidden=48, out=16)
    return {"ibot": root / "checkpoint.pth", "msn": root / "msn.pth.tar"}


def tiny(method: str, ckpt: Path, data: Path, storage: Path, name: str) -> list[str]:
    """The recipe shrunk to a CPU test: test_vit teacher and student, 64/32 px crops (4 x 4 patches)."""
    return tiny_overrides(data, storage, name) + [
        f"teacher.checkpoint={ckpt}", "teacher.arch=test_vit", "student.arch=test_vit", "student.drop_path_rate=0",
        "augment.global_size=64", "augment.local_size=32", "optim.warmup_epochs=0", "method.projector_hidden_dim=32"
        if method == "msn" else "student.head.num_layers=2",
    ]


def _parts(method: str, ckpt: Path):
    teacher = build_teacher(TeacherConfig(kind=method, checkpoint=str(ckpt), arch="test_vit"))
    cfg = load_config(None, [f"method.name={method}", "student.arch=test_vit", "student.head.hidden_dim=32",
                             "student.head.bottleneck_dim=16"])
    torch.manual_seed(0)
    teacher, student = build_models(cfg, teacher)  # the method's registry entry builds its student
    return teacher, student, build_method(cfg.method, teacher, student)


@pytest.mark.parametrize("method", ["ibot", "msn"])
def test_teacher_sees_the_unmasked_globals(checkpoints, method):
    teacher, student, m = _parts(method, checkpoints[method])
    seen = []
    original = teacher.forward_with_patches if method == "ibot" else None

    def spy(x):
        seen.append(x.clone())
        return original(x) if original is not None else teacher(x)

    if method == "ibot":
        teacher.forward_with_patches = spy
    g, lo = torch.randn(8, 3, 64, 64), torch.randn(8, 3, 32, 32)
    before = g.clone()
    torch.manual_seed(1)
    out = m(Views(g, lo, torch.zeros(4), 4, 2), spy, student, 0)
    assert torch.isfinite(out.loss)
    assert len(seen) == 1 and torch.equal(seen[0], before) and torch.equal(g, before)  # no in-place masking


def test_ibot_masks_reach_the_student_and_the_mask_token_learns(checkpoints):
    teacher, student, m = _parts("ibot", checkpoints["ibot"])
    assert isinstance(student.mask_token, torch.nn.Parameter) and "mask_token" in student.state_dict()
    student.eval()
    g, lo = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 32, 32)
    none = torch.zeros(4, 4, 4, dtype=torch.bool)
    with torch.no_grad():
        plain = student([g, lo])
        unmasked = student([g, lo], global_mask=none)
    torch.testing.assert_close(unmasked, plain)  # an empty mask is the ordinary forward
    torch.manual_seed(3)
    masks = m.masks_for(g)
    while not masks.any():
        masks = m.masks_for(g)
    cls, patch = student([g, lo], global_mask=masks, return_patches=True)
    assert patch.shape == (int(masks.sum()), teacher.num_prototypes)
    hit = masks.flatten(1).any(1)
    assert not torch.allclose(cls[:4][hit], plain[:4][hit], atol=1e-5)  # masked images change
    torch.testing.assert_close(cls[:4][~hit], plain[:4][~hit])  # the others do not
    torch.testing.assert_close(cls[4:], plain[4:])  # locals are never masked
    (cls.sum() + patch.sum()).backward()
    assert torch.count_nonzero(student.mask_token.grad) > 0


def test_msn_drops_tokens_and_scores_against_teacher_prototypes(checkpoints):
    teacher, student, m = _parts("msn", checkpoints["msn"])
    assert isinstance(student.head, MSNProjector) and student.head.out_dim == teacher.prototypes.shape[1]
    student.eval()
    g = torch.randn(4, 3, 64, 64)
    keep = m.keep_for(g)
    assert keep.shape == (int(16 * (1 - 0.15)),)
    with torch.no_grad():
        full = student([g])
        dropped = student([g], global_keep=keep)
    assert full.shape == dropped.shape == (4, 16)
    assert not torch.allclose(full, dropped, atol=1e-5)


def test_method_errors_are_one_line(checkpoints, small_folder, tmp_path):
    teacher = build_teacher(TeacherConfig(kind="ibot", checkpoint=str(checkpoints["ibot"])))
    with pytest.raises(ConfigError, match=r"student\.arch must be a ViT") as info:
        build_models(load_config(None, ["method.name=ibot", "student.arch=test_resnet"]), teacher)
    assert "\n" not in str(info.value) and "'test_resnet'" in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown key 'method\.lambda3'"):
        load_config(None, ["method.name=ibot", "student.arch=vit_tiny_patch16_224", "method.lambda3=1"])
    cfg = load_config(None, ["method.name=msn", "student.arch=test_vit"])
    with pytest.raises(ConfigError, match="needs a teacher with frozen prototypes"):
        build_models(cfg, teacher)


@pytest.mark.parametrize("method", ["ibot", "msn"])
def test_recipe_loads_and_runs_one_step_at_tiny_size(checkpoints, small_folder, tmp_path, method):
    recipe = load_config(RECIPES[method])
    assert recipe.method.name == method and recipe.teacher.kind == method and recipe.optim.optimizer == "adamw"
    assert recipe.optim.lr == (2e-3 if method == "ibot" else 1e-3)
    assert (recipe.augment.global_scale, recipe.augment.local_scale) == \
        (((0.25, 1.0), (0.05, 0.25)) if method == "ibot" else ((0.3, 1.0), (0.05, 0.3)))
    cfg = load_config(RECIPES[method], tiny(method, checkpoints[method], small_folder, tmp_path, "r") +
                      ["optim.max_steps=1"])
    table = scan_images(small_folder)
    metrics = train_loop(cfg, LocalContext(table, tmp_path / "r"), len(table))
    assert metrics["step"] == 1 and np.isfinite(metrics["loss"])


@pytest.mark.parametrize("method", ["ibot", "msn"])
def test_loss_falls_on_a_fixed_batch_and_resume_is_exact(checkpoints, small_folder, tmp_path, method):
    table = scan_images(small_folder)
    base = tiny(method, checkpoints[method], small_folder, tmp_path, "a") + [
        f"method.name={method}", f"teacher.kind={method}", "optim.epochs=3", "optim.lr=0.3", "optim.clip_grad=null",
        "run.checkpoint_every_steps=9"]
    train_loop(load_config(None, base), _FixedBatch(table, tmp_path / "a"), len(table))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 18 and np.mean(losses[-4:]) < np.mean(losses[:3]) - 0.3, losses

    # Resume: 9 steps, stop, 9 more == 18 straight (student, mask token / projector, masks all equal).
    b = [o.replace("run.name=a", "run.name=b") for o in base]
    train_loop(load_config(None, [*b, "optim.max_steps=9"]), _FixedBatch(table, tmp_path / "b"), len(table))
    train_loop(load_config(None, b), _FixedBatch(table, tmp_path / "b"), len(table))
    sa = load_state(sorted((tmp_path / "a" / "checkpoints").iterdir())[-1])["student"]
    sb = load_state(sorted((tmp_path / "b" / "checkpoints").iterdir())[-1])["student"]
    assert ("mask_token" in sa) if method == "ibot" else ("head.fc3.weight" in sa)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)
