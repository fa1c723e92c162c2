"""Where fitted prototypes live and when they can be reused.

A fit is keyed by (teacher, data fingerprint, sample size, seed, preprocessing) for the embeddings
and additionally by (K, iterations, init) for the head; each key is a folder under the cache dir:

    <cache_dir>/emb-<key>/embeddings.pt + embeddings.json     the teacher's embeddings of the sample
    <cache_dir>/<teacher>-k<K>-<key>/head.pth + fit.json      the fitted head and how it was fitted

Files are written to a temporary name, fsynced and renamed (never a half-written head under its
real name); the JSON goes last and records the SHA-256 and size of its tensor file, so a folder
without a matching JSON is incomplete and is refitted, never used. A `flock` on `<folder>.lock`
makes concurrent fits of one key (Tune trials) wait for the first instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rob_ray.train.checkpoint import file_sha256, write_durable

__all__ = ["data_fingerprint", "file_fingerprint", "fit_lock", "key_hash", "read_verified", "teacher_fingerprint",
           "write_verified"]


def key_hash(obj: Any, n: int = 16) -> str:
    """Stable short hash of a JSON-able key (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def file_fingerprint(path: str | Path, edge: int = 4 << 20) -> dict[str, Any]:
    """A weights file's identity without reading all of it: absolute path, size, SHA-256 of the first
    and last `edge` bytes (a re-saved or replaced file changes them; reading 4 GB per launch would not pay)."""
    p = Path(path).expanduser().resolve()
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        h.update(f.read(edge))
        if size > edge:
            f.seek(max(edge, size - edge))
            h.update(f.read(edge))
    return {"path": str(p), "bytes": size, "edges_sha256": h.hexdigest()}


def teacher_fingerprint(teacher_cfg: dict[str, Any]) -> dict[str, Any]:
    """The teacher section minus its prototypes / head settings, plus its weights file's fingerprint."""
    t = {k: v for k, v in teacher_cfg.items() if k not in ("prototypes", "head_checkpoint") and v is not None}
    if t.get("checkpoint") and Path(t["checkpoint"]).expanduser().is_file():
        t["checkpoint"] = file_fingerprint(t["checkpoint"])
    return t


def data_fingerprint(table: Any, sample: np.ndarray) -> str:
    """Hash of the table's image list (every path / Parquet row reference, in order) and of the
    sampled images' sizes: a changed data set, order or sample refits; a touched file does not."""
    h = hashlib.sha256()
    h.update(str(len(table)).encode())
    if table.paths is not None:
        for p in table.paths:
            h.update(os.path.abspath(p).encode() + b"\0")
        for i in sample.tolist():
            try:
                h.update(str(os.stat(table.paths[i]).st_size).encode() + b"\0")
            except OSError:
                h.update(b"missing\0")
    else:
        for f in table.parquet_files:
            h.update(os.path.abspath(f).encode() + str(os.stat(f).st_size).encode() + b"\0")
        h.update(np.ascontiguousarray(table.parquet_file_ids).tobytes())
        h.update(np.ascontiguousarray(table.parquet_rows).tobytes())
    h.update(np.ascontiguousarray(sample, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:48] or "teacher"


def write_verified(folder: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                   meta_name: str) -> dict[str, Any]:
    """Write `tensors` to `folder/name` then `meta` (+ sha256, bytes) to `folder/meta_name`, each atomically.
    A stale JSON is removed first, so an interruption between the two leaves an incomplete (refitted) folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / meta_name).unlink(missing_ok=True)
    write_durable(folder / name, lambda f: torch.save(tensors, f))
    meta = {**meta, "file": name, "sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
    write_durable(folder / meta_name, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return meta


def read_verified(folder: Path, name: str, meta_name: str, load: bool = True
                  ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]] | None:
    """(tensors or None when load=False, meta) when `folder/name` matches its JSON; None when absent
    or damaged (a damaged folder is reported once and treated as a cache miss)."""
    meta_path, path = folder / meta_name, folder / name
    if not meta_path.is_file() or not path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        print(f"[rob_ray] warning: '{meta_path}' is unreadable; fitting again", flush=True)
        return None
    if path.stat().st_size != meta.get("bytes") or file_sha256(path) != meta.get("sha256"):
        print(f"[rob_ray] warning: '{path}' does not match its checksum in {meta_name}; fitting again", flush=True)
        return None
    if not load:
        return None, meta
    return torch.load(path, map_location="cpu", weights_only=True), meta


@contextlib.contextmanager
def fit_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on `<folder>.lock` (a plain flock: released by the OS if the process dies)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / (folder.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
