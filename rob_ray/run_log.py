"""`train.log` in the run folder: what a run was launched with, written before training starts.

The resolved config, package versions, the git commit of the code, the machine and the resource
plan: enough to tell later which code and environment produced a checkpoint. Each launch (a
resume too) appends its own section.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

__all__ = ["PACKAGES", "git_commit", "launch_record", "write_train_log"]

PACKAGES = ("rob_ray", "torch", "torchvision", "timm", "ray", "numpy", "pyarrow", "pydantic", "pillow",
            "efficientnet-lite-pytorch")


def git_commit(repo: Path) -> str | None:
    """`<sha>` (with ` (dirty)` when the tree has changes) of the checkout holding the code; None outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + (" (dirty)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _machine() -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "os": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    try:
        import torch

        info["cuda"] = torch.version.cuda or "none (CPU build)"
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # torch without a working CUDA runtime: still a log
        info["gpus"] = []
    return info


def launch_record(config: dict[str, Any], plan: dict[str, Any], repo: Path) -> str:
    """The text of one launch's section."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    body = {"git_commit": git_commit(repo) or "unknown (not a git checkout)", "packages": _versions(),
            "machine": _machine(), "resource_plan": plan, "config": config}
    return f"=== launch {now} ===\n" + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def write_train_log(path: Path, config: dict[str, Any], plan: dict[str, Any], repo: Path) -> Path:
    """Append this launch's section to `path` (created with its folder when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(launch_record(config, plan, repo) + "\n")
    return path
