"""Checkpoint files: one directory holding `state.pt` (everything to continue) + `meta.json`.

Written to a temporary name and renamed, so a crash never leaves a half-written checkpoint
under a real name; `meta.json` is written last and carries the SHA-256 and size of `state.pt`,
so a copy that was cut short (Ray copies the directory into storage) is detected on load.
Loading checks the file and falls back to an older one when it is damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rob_ray.errors import CheckpointError

__all__ = [
    "RAY_SNAPSHOT",
    "CheckpointError",
    "LocalCheckpoints",
    "ResumeChoice",
    "checkpoint_dirs",
    "checkpoint_step",
    "choose_resume",
    "file_sha256",
    "latest_good",
    "load_state",
    "ray_recorded",
    "save_state",
    "unused_checkpoint_name",
    "verify_checkpoint",
    "write_durable",
]

STATE_FILE = "state.pt"
META_FILE = "meta.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of the checkpoints it tracks


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_durable(path: Path, write) -> None:
    """Write via `<path>.tmp`, fsync, rename: readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_state(directory: str | Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write `state` (tensors, numbers, strings, nested dicts/lists) and `meta` into `directory`.

    `meta.json` goes last and records `state_sha256` / `state_bytes`: a directory without it,
    or whose `state.pt` does not match it, is incomplete and `load_state` refuses it.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    write_durable(d / STATE_FILE, lambda f: torch.save(state, f))
    meta = {**meta, "state_sha256": file_sha256(d / STATE_FILE), "state_bytes": (d / STATE_FILE).stat().st_size}
    write_durable(d / META_FILE, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return d


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """Check `state.pt` against `meta.json`; returns the meta. Raises CheckpointError."""
    d = Path(directory)
    f = d / STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"checkpoint '{d}' has no {STATE_FILE}")
    try:
        meta = json.loads((d / META_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{d}' is incomplete: {META_FILE} missing or unreadable "
                              f"({type(exc).__name__})") from None
    want = meta.get("state_sha256")
    if want is None:  # written before checksums existed: only the unpickling check below applies
        return meta
    try:
        size = f.stat().st_size
    except OSError:  # removed while we looked (a superseded folder being cleaned up)
        raise CheckpointError(f"checkpoint '{d}' has no {STATE_FILE}") from None
    if size != meta.get("state_bytes", size):
        raise CheckpointError(f"checkpoint '{d}' is truncated: {STATE_FILE} has {size} bytes, "
                              f"{meta['state_bytes']} were written")
    try:
        digest = file_sha256(f)
    except OSError as exc:
        raise CheckpointError(f"checkpoint '{d}' is unreadable ({type(exc).__name__})") from None
    if digest != want:
        raise CheckpointError(f"checkpoint '{d}' is corrupt: {STATE_FILE} does not match its SHA-256 in {META_FILE}")
    return meta


def load_state(directory: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory (weights_only: no arbitrary code runs). Raises CheckpointError."""
    f = Path(directory) / STATE_FILE
    verify_checkpoint(directory)
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, I/O error: all mean "unusable"
        raise CheckpointError(f"checkpoint '{directory}' is unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None


_STEP_NAME = re.compile(r"step_(\d+)(?:_r(\d+))?$")


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first: Ray Train's `checkpoint_step_N[_rK]` and local
    `checkpoints/step_N`, ordered by (step, rewrite K). Damaged ones are included."""
    found = []
    root = Path(run_dir)
    for pattern in ("checkpoint_step_*", "checkpoints/step_*"):
        for p in root.glob(pattern):
            m = _STEP_NAME.search(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), int(m.group(2) or 0), str(p), p))
    return [p for *_, p in sorted(found)]


def checkpoint_step(path: str | Path) -> tuple[int, int]:
    """(step, rewrite K) from a checkpoint folder's name (`checkpoint_step_N[_rK]`, `step_N`); (-1, 0) otherwise."""
    m = _STEP_NAME.search(Path(path).name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (-1, 0)


def ray_recorded(run_dir: str | Path) -> set[str] | None:
    """Checkpoint folder names Ray Train's snapshot records for this run (an empty set when Ray
    wrote none yet); None when the snapshot exists but cannot be read (then nothing is deleted)."""
    f = Path(run_dir) / RAY_SNAPSHOT
    if not f.is_file():
        return set()
    try:
        snap = json.loads(f.read_text())
        results = [*snap.get("checkpoint_results", []), *snap.get("pending_training_results", []),
                   snap.get("latest_checkpoint_result") or {}]
        return {r["checkpoint_dir_name"] for r in results if r.get("checkpoint_dir_name")}
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


@dataclass
class ResumeChoice:
    """Which checkpoint a relaunch continues from, why, and the folders it makes obsolete."""

    path: Path | None
    state: dict[str, Any] | None
    reason: str
    superseded: list[Path] = field(default_factory=list)  # delete once a newer checkpoint is on disk

    def message(self) -> str:
        if self.path is None:
            return f"[rob_ray] starting from step 0: {self.reason}"
        return f"[rob_ray] resuming from {self.path.name} (step {self.state['step']}): {self.reason}"


def choose_resume(run_dir: str | Path, ray_name: str | None) -> ResumeChoice:
    """The newest complete checkpoint (`meta.json` checksum verified) among the run folder's
    `checkpoint_step_*` folders, whether or not Ray recorded it.

    Ray records a checkpoint only after its folder is fully written; a driver killed in between
    leaves a complete folder Ray does not know (its `get_checkpoint()` then names an older one, or
    none). Such a folder, and every other one Ray does not track, is `superseded` once a newer
    checkpoint is saved: Ray never deletes folders it does not track, so the caller does.
    `ray_name`: the folder `ray.train.get_checkpoint()` gave (None: Ray has none).
    """
    dirs = [p for p in checkpoint_dirs(run_dir) if p.parent == Path(run_dir)]
    found = latest_good(dirs)
    recorded = ray_recorded(run_dir)
    untracked = [] if recorded is None else [p for p in dirs if p.name not in recorded]
    if found is None:
        why = "no complete checkpoint in the run folder" if dirs else "no checkpoint yet"
        return ResumeChoice(None, None, why, untracked)
    path, state = found
    if ray_name is None:
        why = "the newest complete checkpoint in the run folder; Ray had recorded none (its report was lost: the " \
              "driver or a worker stopped between writing it and Ray's record)"
    elif ray_name == path.name:
        why = "Ray's newest recorded checkpoint"
    elif checkpoint_step(ray_name) > checkpoint_step(path):
        why = f"the newest complete checkpoint; Ray's newest record {ray_name} is damaged or missing"
    else:
        why = f"the newest complete checkpoint in the run folder; Ray's record ends at {ray_name} (this one's report " \
              "was lost: the driver or a worker stopped between writing it and Ray's record)"
    return ResumeChoice(path, state, why, untracked)


def unused_checkpoint_name(run_dir: str | Path, step: int) -> str:
    """`checkpoint_step_N`, or `..._rK` when that folder exists (a damaged checkpoint that was
    skipped, or one whose report a crash lost): Ray's bookkeeping must never hold two
    checkpoints at one path, or deleting the stale one would delete the new one."""
    base = f"checkpoint_step_{step:08d}"
    name, k = base, 0
    while (Path(run_dir) / name).exists():
        k += 1
        name = f"{base}_r{k}"
    return name


def latest_good(candidates: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """Newest readable checkpoint among `candidates` (oldest first), reporting each damaged one."""
    for path in reversed(candidates):
        try:
            return path, load_state(path)
        except CheckpointError as exc:
            print(f"[rob_ray] warning: {exc}; trying an older checkpoint", flush=True)
    return None


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
        if final.exists():  # a damaged one we resumed past: move it aside, never delete before the swap
            old = self.root / f".old_step_{step:08d}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        for old in self.list()[: -self.num_to_keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """Newest readable checkpoint, skipping (and reporting) damaged ones."""
        return latest_good(self.list())
