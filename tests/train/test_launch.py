"""Placement from config, checked against a cluster's resources without starting Ray."""

from __future__ import annotations

from rob_ray.config import load_config
from rob_ray.train.launch import _job_env_var_names, busy_warning, cluster_shortfalls, resource_plan

GPU_RUN = ["scaling.num_workers=16", "scaling.use_gpu=true", "scaling.cpus_per_worker=8", "scaling.gpus_per_worker=1",
           "scaling.workers_per_node=8", "data.num_actors=2", "data.cpus_per_actor=4", "data.actor_resources={data_cpu: 4}"]
P5 = {"CPU": 192.0, "GPU": 8.0}  # p5.48xlarge as the launcher config declares it
DATA_NODE = {"CPU": 64.0, "data_cpu": 64.0}


def test_plan_counts_custom_resources_and_nodes():
    plan = resource_plan(load_config(None, GPU_RUN))
    assert plan["train_cpus"] == 16 * 8 and plan["gpus"] == 16
    assert plan["data_cpus"] == 16 * 2 * 4 and plan["resource/data_cpu"] == 16 * 2 * 4
    assert plan["nodes"] == 2


def test_two_gpu_nodes_and_data_nodes_fit():
    nodes = [P5, P5, DATA_NODE, DATA_NODE]
    totals = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU", "data_cpu")}
    assert cluster_shortfalls(load_config(None, GPU_RUN), totals, nodes) == []


def test_missing_data_nodes_and_too_small_gpu_nodes_are_named():
    small = {"CPU": 96.0, "GPU": 4.0}  # 4-GPU nodes cannot host 8 workers each
    nodes = [small] * 4
    totals = {"CPU": 384.0, "GPU": 16.0}
    short = cluster_shortfalls(load_config(None, GPU_RUN), totals, nodes)
    assert any("128 'data_cpu' (cluster has 0" in s for s in short)
    assert any("2 nodes with CPU 64, GPU 8 for scaling.workers_per_node=8 (cluster has 0)" in s for s in short)


def test_custom_resources_reject_cpu_and_gpu_keys():
    import pytest

    from rob_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.actor_resources takes custom resources"):
        load_config(None, ["data.actor_resources={CPU: 2}"])
    with pytest.raises(ConfigError, match=r"scaling.worker_resources takes custom resources"):
        load_config(None, ["scaling.worker_resources={train_slot: 0}"])


def test_job_env_vars_are_read_from_the_job_config(monkeypatch):
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"env_vars": {"A": "1", "B": "2"}}}')
    assert _job_env_var_names() == {"A", "B"}
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    assert _job_env_var_names() == set()


def test_busy_cluster_warns_before_waiting():
    # The demo plan (1 training CPU + 1 data CPU) on a 2-CPU node where another run holds 1.5 CPUs.
    cfg = load_config(None, ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "data.cpus_per_actor=1"])
    nodes = [{"CPU": 2.0}]
    assert busy_warning(cfg, {"CPU": 2.0}, nodes) is None
    msg = busy_warning(cfg, {"CPU": 0.5}, nodes)
    assert msg is not None and "2 CPU (cluster has 0.5)" in msg and "wait on each other" in msg


def test_plan_for_a_two_core_laptop():
    """The demo's shape: the data actor decodes a fraction of a core's worth, the step gets both cores."""
    from rob_ray.train.plan import NodeShape, apply_plan

    cfg = load_config(None, ["scaling.num_workers=1"])
    plan = resource_plan(cfg, NodeShape(cpus=2), decode_ms=0.5)
    assert plan["data_actors_per_worker"] == 1 and plan["cpus_per_actor"] == 0.1
    assert plan["cpus_per_worker"] == 1.9 and plan["torch_threads"] == 2 and plan["total_cpus"] == 2.0
    assert any("2 torch threads" in line for line in plan["why"]) and any("0.5 ms" in line for line in plan["why"])
    resolved = apply_plan(cfg, plan)
    assert (resolved.data.num_actors, resolved.data.cpus_per_actor) == (1, 0.1)
    assert (resolved.scaling.cpus_per_worker, resolved.scaling.torch_threads) == (1.9, 2)
    # Crops per image in the actors (the old placement) is real work: it gets half the cores, no more.
    heavy = resource_plan(load_config(None, ["augment.crops_on=data_actors"]), NodeShape(cpus=2), decode_ms=20.0)
    assert heavy["data_actors_per_worker"] == 1 and heavy["cpus_per_actor"] == 1.0 and heavy["torch_threads"] == 1
    # In-process (num_workers=0): no Ray worker to reserve, the loop still gets the threads.
    local = resource_plan(load_config(None, ["scaling.num_workers=0"]), NodeShape(cpus=2), decode_ms=0.5)
    assert local["train_cpus"] == 0 and local["torch_threads"] == 2 and local["data_cpus"] == 0.1


def test_plan_for_a_sixteen_core_one_gpu_host():
    """A GPU consumes ~3,000 img/s: decoding 224-px JPEGs at 1.5 ms each needs 4.5 CPUs (5 actors);
    the worker keeps the rest."""
    from rob_ray.train.plan import NodeShape

    cfg = load_config(None, ["scaling.num_workers=1", "scaling.use_gpu=true"])
    plan = resource_plan(cfg, NodeShape(cpus=16, gpus=1), decode_ms=1.5)
    assert plan["data_actors_per_worker"] == 5 and plan["cpus_per_actor"] == 0.9 and plan["data_cpus"] == 4.5
    assert plan["cpus_per_worker"] == 11.5 and plan["torch_threads"] == 12 and plan["gpus"] == 1
    assert plan["total_cpus"] == 16.0
    # Two workers on a 2-GPU node of the same size split it; explicit settings win over the rule.
    two = resource_plan(load_config(None, ["scaling.num_workers=2", "scaling.use_gpu=true"]), NodeShape(32, 2),
                        decode_ms=1.5)
    assert two["data_actors_per_worker"] == 5 and two["cpus_per_worker"] == 11.5 and two["total_cpus"] == 32.0
    fixed = resource_plan(load_config(None, ["scaling.use_gpu=true", "data.num_actors=2", "data.cpus_per_actor=2",
                                             "scaling.torch_threads=4"]), NodeShape(16, 1), decode_ms=1.5)
    assert fixed["data_cpus"] == 4 and fixed["cpus_per_worker"] == 12 and fixed["torch_threads"] == 4


def test_plan_leaves_the_data_actors_their_cpus_in_floats_too():
    # 2 - 1.55 == 0.44999999999999996 < 0.45: Ray Data's resource manager then reports its actor as starved
    # ("Cluster resources are not enough ... may hang forever") although Ray itself places it.
    from rob_ray.train.plan import NodeShape, resource_plan

    for decode_ms, threads in ((0.5, 2), (5.0, 2), (9.0, 2), (13.0, 1), (20.0, 1)):
        plan = resource_plan(load_config(None, ["augment.crops_on=data_actors"]), NodeShape(cpus=2), decode_ms=decode_ms)
        data = plan["data_actors_per_worker"] * plan["cpus_per_actor"]
        assert 2.0 - plan["cpus_per_worker"] >= data and plan["total_cpus"] <= 2.0 + 1e-9
        assert plan["torch_threads"] == threads  # the worker's CPUs (1.9, 1.6, 1.25, 1.0) rounded up


def test_plan_counts_the_evaluation_actor_and_names_its_shortfall():
    """eval.online_knn_mode=actor: the actor's CPUs come off the node before the worker's share and into the
    totals; a cluster without a node that fits it gets one line naming it and the fix."""
    from rob_ray.train.plan import NodeShape

    knn = ["scaling.num_workers=1", "eval.online_knn_every_epochs=1", "eval.online_knn_path=x"]
    base = resource_plan(load_config(None, knn), NodeShape(cpus=4), decode_ms=0.5)
    actor = resource_plan(load_config(None, [*knn, "eval.online_knn_mode=actor"]), NodeShape(cpus=4), decode_ms=0.5)
    assert (base["eval_cpus"], base["eval_gpus"]) == (0.0, 0.0) and base["total_cpus"] == 4.0
    assert (actor["eval_cpus"], actor["eval_gpus"]) == (1.0, 0.0)
    assert abs(actor["cpus_per_worker"] + actor["data_cpus"] - 3.0) < 1e-3 and abs(actor["total_cpus"] - 4.0) < 1e-3
    assert any("evaluation actor (eval.online_knn_mode=actor): 1 CPU, 0 GPU" in line for line in actor["why"])
    # Off without online k-NN (nothing to evaluate): no actor, nothing counted.
    off = resource_plan(load_config(None, ["scaling.num_workers=1", "eval.online_knn_mode=actor"]), NodeShape(cpus=4))
    assert off["eval_cpus"] == 0.0
    gpu_actor = load_config(None, [*knn, "eval.online_knn_mode=actor", "eval.actor_gpus=1", "scaling.cpus_per_worker=1",
                                   "data.num_actors=1", "data.cpus_per_actor=1"])
    assert resource_plan(gpu_actor)["gpus"] == 1.0
    cpu_nodes = [{"CPU": 8.0}, {"CPU": 8.0}]
    short = cluster_shortfalls(gpu_actor, {"CPU": 16.0}, cpu_nodes)
    assert len(short) == 2 and short[0] == "1 GPU (cluster has 0)"
    assert short[1] == ("1 CPU + 1 GPU on one node for the evaluation actor (eval.online_knn_mode=actor; no node has "
                        "them: lower eval.actor_cpus / eval.actor_gpus or use eval.online_knn_mode=async)")
    assert cluster_shortfalls(gpu_actor, {"CPU": 16.0, "GPU": 1.0}, [*cpu_nodes, {"CPU": 2.0, "GPU": 1.0}]) == []


def test_a_fractional_data_share_quiets_ray_datas_false_starvation_warning():
    """Ray Data 2.60 counts the CPUs Ray Train leaves in whole CPUs: below one, it warns after 60 s that the
    running data actors can never run. On a cluster started for the plan that is a false alarm, put past
    any run's length; with a whole CPU or more left (where the warning can be real) nothing changes."""
    from rob_ray.train.launch import STARVATION_DELAY_ENV, data_share_env
    from rob_ray.train.plan import NodeShape

    demo = resource_plan(load_config(None, ["augment.crops_on=data_actors"]), NodeShape(cpus=2), decode_ms=1.5)
    assert 2 - demo["train_cpus"] < 1 and demo["data_cpus"] > 0  # the demo's shape: 0.2 CPU for the actor
    assert data_share_env(2, demo, {}) == {STARVATION_DELAY_ENV: "1e9"}
    assert data_share_env(2, demo, {STARVATION_DELAY_ENV: "30"}) == {STARVATION_DELAY_ENV: "30"}  # the user's
    whole = resource_plan(load_config(None, ["scaling.cpus_per_worker=1", "data.cpus_per_actor=1"]),
                          NodeShape(cpus=2), decode_ms=1.5)
    assert data_share_env(2, whole, {}) == {}
    gpu_host = resource_plan(load_config(None, ["scaling.use_gpu=true"]), NodeShape(16, 1), decode_ms=1.5)
    assert 16 - gpu_host["train_cpus"] >= 1 and data_share_env(16, gpu_host, {}) == {}


def test_the_plan_says_how_the_worker_runs_the_teacher():
    """`--dry-run` shows whether the teacher will be compiled frozen (CPU default), compiled lazily (GPU) or eager."""
    from rob_ray.train.plan import NodeShape

    def line(cfg):
        plan = resource_plan(cfg, NodeShape(cpus=16, gpus=1) if cfg.scaling.use_gpu else NodeShape(cpus=2), 0.5)
        return [w for w in plan["why"] if w.startswith("teacher:")]

    assert line(load_config(None, []))[0].startswith("teacher: compiled frozen for inference at set-up")
    assert line(load_config(None, GPU_RUN))[0].startswith("teacher: torch.compile'd at its first step")
    assert line(load_config(None, ["run.compile_teacher=false"]))[0].startswith("teacher: eager")
    assert line(load_config(None, ["method.name=dino_scratch", "method.out_dim=16"]))[0].startswith("teacher: eager")
