"""cluster/: launcher YAMLs against the schema Ray ships, KubeRay manifests, and the example
training config against the clusters they declare."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from rob_ray.config import load_config
from rob_ray.train.launch import cluster_shortfalls
from tests.conftest import REPO

CLUSTER = REPO / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
EXAMPLE = CLUSTER / "configs" / "rob_dino_vitb16_8xh100.yaml"


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_matches_rays_schema(name):
    config = _yaml(CLUSTER / name)
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    # What `ray up` does before launching: merge the provider defaults, validate again.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_node_types(name):
    config = _yaml(CLUSTER / name)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu = {n: t for n, t in types.items() if t["resources"].get("GPU")}
    assert sorted(t["resources"]["GPU"] for t in gpu.values()) == [1, 8]  # an 8-GPU and a 1-GPU type
    data = [t for t in types.values() if "data_cpu" in t["resources"]]
    assert len(data) == 1 and "GPU" not in data[0]["resources"]
    assert data[0]["resources"]["data_cpu"] == data[0]["resources"]["CPU"]
    for n, t in types.items():
        if n != config["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"], n
    assert sum(t.get("max_workers", 0) for t in types.values()) <= config["max_workers"]
    # Every worker type is spot / preemptible (the README says how to switch to on-demand).
    for n, t in types.items():
        nc = t["node_config"]
        spot = nc.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or any(
            d.get("provisioningModel") == "SPOT" or d.get("preemptible") is True for d in nc.get("scheduling", []))
        assert spot == (n != config["head_node_type"]), n
    # The project is synced to every node and installed there; Ray's version matches the project's pin.
    assert config["file_mounts"] == {"~/rob_ray": "."}
    assert any("pip install" in c and "~/rob_ray" in c for c in config["setup_commands"])
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")


def _nodes_at_max(launcher: dict) -> list[dict[str, float]]:
    nodes = []
    for name, t in launcher["available_node_types"].items():
        count = 1 if name == launcher["head_node_type"] else t["max_workers"]
        nodes += [{k: float(v) for k, v in t["resources"].items()}] * count
    return nodes


@pytest.mark.parametrize("name", LAUNCHERS)
def test_example_config_fits_the_cluster_fully_scaled_and_needs_the_data_nodes(name):
    cfg = load_config(EXAMPLE)
    nodes = _nodes_at_max(_yaml(CLUSTER / name))
    totals = {k: sum(n.get(k, 0.0) for n in nodes) for k in {k for n in nodes for k in n}}
    assert cluster_shortfalls(cfg, totals, nodes) == []
    no_data = [n for n in nodes if "data_cpu" not in n]
    short = cluster_shortfalls(cfg, {k: sum(n.get(k, 0.0) for n in no_data) for k in totals}, no_data)
    assert len(short) == 1 and "'data_cpu'" in short[0]


def _manifests():
    return {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "raycluster.yaml").read_text())} | \
        {d["kind"]: d for d in yaml.safe_load_all((CLUSTER / "kuberay" / "rayjob.yaml").read_text())}


def test_kuberay_raycluster():
    rc = _manifests()["RayCluster"]
    assert rc["apiVersion"] == "ray.io/v1" and rc["spec"]["rayVersion"] == ray.__version__
    assert rc["spec"]["enableInTreeAutoscaling"] is True
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    gpus, data = {}, []
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        (container,) = g["template"]["spec"]["containers"]
        assert container["image"] == head["template"]["spec"]["containers"][0]["image"]
        limits = container["resources"]["limits"]
        assert limits == container["resources"]["requests"]
        if "nvidia.com/gpu" in limits:
            gpus[name] = int(limits["nvidia.com/gpu"])
        custom = g["rayStartParams"].get("resources")
        if custom:  # KubeRay passes it to `ray start --resources`, quoted once more
            parsed = json.loads(json.loads(custom))
            assert parsed == {"data_cpu": int(limits["cpu"])} and "nvidia.com/gpu" not in limits
            data.append(name)
    assert sorted(gpus.values()) == [1, 8] and len(data) == 1


def test_kuberay_rayjob_runs_the_entry_point_on_the_cluster():
    m = _manifests()
    job = m["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == m["RayCluster"]["metadata"]["name"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "/home/ray/rob_ray/experiments/run.py", "train"]
    config = argv[argv.index("--config") + 1].replace("/home/ray/rob_ray/", "")
    assert (REPO / config).is_file()  # the image copies the repo to /home/ray/rob_ray (cluster/Dockerfile)
    load_config(REPO / config, [a for a in argv[argv.index("--config") + 2:]])
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert env["env_vars"]["ROB_RAY_AUTOSCALING"] == "1"  # pods come up after submission
    assert "COPY --chown=ray:users . /home/ray/rob_ray" in (CLUSTER / "Dockerfile").read_text()
