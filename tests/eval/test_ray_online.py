"""Online evaluation on an actor of its own (`eval.online_knn_mode=actor`): the same numbers, steps,
weights and best checkpoint as inline evaluation (starts a local Ray)."""

from __future__ import annotations

import json

import pytest
import torch

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.train import LocalContext, load_state
from rob_ray.train.loop import train_loop
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.ray


@pytest.fixture
def ray_local():
    import ray

    from rob_ray.train.launch import init_ray

    init_ray(load_config(None, ["scaling.ray_num_cpus=2"]))  # the actor imports this checkout's rob_ray
    yield ray
    ray.shutdown()


def _run(labelled_root, tmp_path, mode: str) -> tuple:
    cfg = load_config(None, tiny_overrides(labelled_root / "train", tmp_path, mode) + [
        "eval.online_knn_every_epochs=1", f"eval.online_knn_path={labelled_root}", "run.log_every_steps=2",
        f"eval.online_knn_mode={mode}", "eval.online_linear=true", "run.checkpoint_score_metric=online_linear_top1",
        "run.checkpoint_score_mode=max", "optim.epochs=3", "optim.lr=0.05", "run.num_to_keep=1"])
    table = scan_images(cfg.data.path)
    threads = torch.get_num_threads()
    final = train_loop(cfg, LocalContext(table, cfg.run_dir(), num_to_keep=1), len(table))  # 1 torch thread
    torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (cfg.run_dir() / "metrics.jsonl").read_text().splitlines()]
    return cfg.run_dir(), rows, final


def test_actor_run_matches_inline_run(labelled_root, tmp_path, ray_local):
    """Same k-NN and linear-probe values at the same eval steps, same final and best weights; the actor
    holds its own CPU and is gone after the run."""
    in_dir, in_rows, _ = _run(labelled_root, tmp_path, "inline")
    ac_dir, ac_rows, ac_final = _run(labelled_root, tmp_path, "actor")
    keys = ("online_knn_top1", "online_linear_top1", "embedding_std", "probe_prototypes_used")
    inline = {r["step"]: {k: r[k] for k in keys} for r in in_rows if "online_knn_top1" in r}
    actor = {r["eval_step"]: {k: r[k] for k in keys} for r in ac_rows if "online_knn_top1" in r}
    assert sorted(inline) == [5, 10, 15]
    assert actor == inline  # every epoch's values, attributed to their own step
    assert all(r["step"] >= r["eval_step"] for r in ac_rows if "eval_step" in r)
    assert ac_final["eval_step"] == 15 and {k: ac_final[k] for k in keys} == inline[15]
    final_a = load_state(sorted((ac_dir / "checkpoints").iterdir())[-1])["student"]
    final_i = load_state(sorted((in_dir / "checkpoints").iterdir())[-1])["student"]
    assert all(torch.equal(final_a[k], final_i[k]) for k in final_i)  # evaluation never touches training
    best_a, best_i = load_state(ac_dir / "best"), load_state(in_dir / "best")
    lin = {s: v["online_linear_top1"] for s, v in inline.items()}
    assert best_a["step"] == best_i["step"] == min(s for s, v in lin.items() if v == max(lin.values()))
    assert all(torch.equal(best_a["student"][k], best_i["student"][k]) for k in best_i["student"])
    # The run's last evaluation closed the evaluator, which ended the actor: no actor of this run is alive.
    from ray.util.state import list_actors

    alive = [a for a in list_actors(filters=[("class_name", "=", "OnlineEvalActor")]) if a.state == "ALIVE"]
    assert alive == []


def test_actor_mode_needs_ray(labelled_root, tmp_path):
    """Without Ray (an in-process run, a GPU box), actor mode is one config error naming the alternative."""
    import ray

    from rob_ray.config import ConfigError

    assert not ray.is_initialized()
    cfg = load_config(None, tiny_overrides(labelled_root / "train", tmp_path, "noray") + [
        "eval.online_knn_every_epochs=1", f"eval.online_knn_path={labelled_root}", "eval.online_knn_mode=actor"])
    table = scan_images(cfg.data.path)
    threads = torch.get_num_threads()
    with pytest.raises(ConfigError, match=r"online_knn_mode=actor needs a run under Ray.*online_knn_mode=async"):
        train_loop(cfg, LocalContext(table, cfg.run_dir(), num_to_keep=1), len(table))
    torch.set_num_threads(threads)

