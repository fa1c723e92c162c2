"""Checkpoint files: one directory holding `state.pt` (everything to continue) + `meta.json`.

Written to a temporary name and renamed, so a crash never leaves a half-written checkpoint
under a real name; loading checks the file and falls back to an older one when it is damaged.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "LocalCheckpoints", "load_state", "save_state"]

STATE_FILE = "state.pt"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    pass


def save_state(directory: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, nested dicts/lists) and `meta` into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, d / STATE_FILE)
    (d / META_FILE).write_text(json.dumps(meta, indent=1))
    return d


def load_state(directory: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory (weights_only: no arbitrary code runs). Raises CheckpointError."""
    f = Path(directory) / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"checkpoint '{directory}' has no {STATE_FILE}")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, I/O error: all mean "unusable"
        raise CheckpointError(f"checkpoint '{directory}' is unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None


class LocalCheckpoints:
    """Checkpoints in `<run_dir>/checkpoints/step_XXXXXXXX` for runs without Ray Train workers."""

    def __init__(self, run_dir: str | Path, num_to_keep: int = 2) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.num_to_keep = num_to_keep

    def list(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step_"))

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> Path:
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp_step_{step:08d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_state(tmp, state, meta)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.list()[: -self.num_to_keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """Newest readable checkpoint, skipping (and reporting) damaged ones."""
        for path in reversed(self.list()):
            try:
                return path, load_state(path)
            except CheckpointError as exc:
                print(f"[rob_ray] warning: {exc}; trying an older checkpoint", flush=True)
        return None
