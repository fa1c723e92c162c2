"""The CLI on a real local Ray: `fit-prototypes` embeds with Ray Data actors, then `train` reuses the
cached head (no second fit) and trains a student on the fitted prototypes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rob_ray.cli import main
from rob_ray.train.checkpoint import load_state
from rob_ray.train.launch import latest_checkpoint_dir
from tests.conftest import tiny_overrides
from tests.helpers_ckpt import write_timm_classifier

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_session():
    import ray

    yield
    ray.shutdown()


def test_fit_prototypes_verb_then_train_reuses_the_head(small_folder, tmp_path, ray_session, capsys):
    # A timm *classifier* used as a headless backbone: the fitted prototypes replace its 1000 class logits.
    ckpt = write_timm_classifier(tmp_path / "cls.pth", "test_resnet", 1000)
    args = [*tiny_overrides(small_folder, tmp_path / "runs", "proto"), "teacher.kind=timm", "teacher.arch=test_resnet",
            f"teacher.checkpoint={ckpt}", "teacher.prototypes.fit.k=5", "teacher.prototypes.fit.images=30",
            "teacher.prototypes.fit.iterations=4", "teacher.prototypes.fit.batch_size=8", "optim.max_steps=2",
            "scaling.ray_num_cpus=2", "data.cpus_per_actor=0.5", "scaling.cpus_per_worker=0.5"]
    assert main(["fit-prototypes", *args]) == 0
    first = capsys.readouterr().out
    assert "fitted K=5 on 30 images" in first and "recommended method.teacher_temp" in first
    heads = sorted((tmp_path / "runs" / "prototypes").glob("test_resnet-k5-*/head.pth"))
    assert len(heads) == 1
    meta = json.loads((heads[0].parent / "fit.json").read_text())
    assert meta["sample_size"] == 30 and meta["k"] == 5 and sum(meta["cluster_sizes"]["histogram"].values()) == 5

    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "reusing K=5 fitted on 30 images" in out and "spherical k-means" not in out  # cache hit, no refit
    ckpt_dir = latest_checkpoint_dir(tmp_path / "runs" / "proto")
    state = load_state(ckpt_dir)
    assert state["step"] == 2 and state["student"]["head.last_layer.parametrizations.weight.original1"].shape[0] == 5
    assert Path(state["config"]["teacher"]["prototypes"]["head"]) == heads[0]
    # demo.yaml (the default --config) sets method.teacher_temp: 1.0 itself, and a set temperature is never replaced
    assert state["config"]["method"]["teacher_temp"] == 1.0 != meta["recommended_teacher_temp"]
