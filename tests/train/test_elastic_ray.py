"""An elastic worker range on a real local Ray: `scaling.num_workers=1-2` becomes Ray Train's
(min, max) group; a simulated preemption notice checkpoints at its step, the group restarts from it,
and the run ends with the weights of a one-worker run without Ray (same global batch), up to float
reduction order (the group may have 1 or 2 workers, whatever Ray Train chose)."""

from __future__ import annotations

import pytest

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.train import LocalContext, load_state
from rob_ray.train.launch import fit, latest_checkpoint_dir
from rob_ray.train.loop import train_loop
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.ray

SETTINGS = ["student.arch=test_efficientnet_gn", "optim.global_batch_size=8", "optim.max_steps=4",
            "run.checkpoint_every_steps=100", "scaling.cpus_per_worker=0.5", "data.num_actors=1",
            "data.cpus_per_actor=0.5", "scaling.ray_num_cpus=2", "scaling.ray_address=local"]


def test_elastic_range_with_a_preemption_ends_like_one_worker(tmp_path, small_folder, capfd):
    import ray

    folder = small_folder  # 4 classes x 12 real photos
    table = scan_images(folder)
    ref_cfg = load_config(None, tiny_overrides(folder, tmp_path, "ref") + SETTINGS)
    train_loop(ref_cfg, LocalContext(table, tmp_path / "ref"), len(table))
    cfg = load_config(None, tiny_overrides(folder, tmp_path, "elastic") + SETTINGS + [
        "scaling.num_workers=1-2", "debug.preempt_at_step=2", "run.max_failures=1"])
    try:
        result = fit(cfg, table)
    finally:
        ray.shutdown()
    out = capfd.readouterr().out
    assert "[rob_ray] elastic: 1-2 workers, global batch 8" in out
    assert "[rob_ray] preemption notice at step 2: checkpoint saved" in out
    assert "[rob_ray] resumed from step 2" in out
    assert result.metrics["step"] == 4
    a = load_state(latest_checkpoint_dir(result.run_dir))["student"]
    b = load_state(sorted((tmp_path / "ref" / "checkpoints").iterdir())[-1])["student"]
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()) < 1e-4
