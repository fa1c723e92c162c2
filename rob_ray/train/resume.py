"""Is a run folder's earlier config one its checkpoints can continue under?

Relaunching a run name resumes it. If the model-shaping settings changed in between (another
student, teacher or objective), loading the checkpoint would fail deep inside a worker with a
state_dict traceback — after the new config had overwritten the old one. This check runs in the
driver before Ray starts and before anything is written, and refuses with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rob_ray.config import Config, config_to_dict, load_yaml
from rob_ray.errors import ConfigError

__all__ = ["RESUME_KEYS", "changed_keys", "check_resumable"]

# Settings a checkpoint's tensors (student, head, optimiser state, method buffers) depend on.
# Everything else (epochs, LR, workers, data path, ...) may change between launches.
RESUME_KEYS = ("student", "teacher", "method", "optim.optimizer", "students")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: list(node) if isinstance(node, tuple) else node}


def changed_keys(old: dict[str, Any], new: dict[str, Any], sections: tuple[str, ...] = RESUME_KEYS) -> list[str]:
    """Dotted keys under `sections` whose values differ, as 'key: old -> new' (sorted)."""
    a, b = _flatten(old), _flatten(new)

    def wanted(key: str) -> bool:
        return any(key == s or key.startswith(s + ".") for s in sections)

    missing = object()
    return [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}"
            for k in sorted(k for k in set(a) | set(b) if wanted(k)) if a.get(k, missing) != b.get(k, missing)]


def check_resumable(cfg: Config, run_dir: str | Path) -> None:
    """Raise ConfigError when `run_dir` holds a run started with different model-shaping settings."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        return
    try:
        old = load_yaml(saved.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # reported, never guessed at
        raise ConfigError(f"config error: run folder '{run_dir}' has an unreadable config.yaml; choose a new "
                          "run.name (or move that folder away)") from None
    old = old if isinstance(old, dict) else {}
    old.setdefault("students", [])  # written before multi-student runs existed: one student
    diffs = changed_keys(old, config_to_dict(cfg))
    if diffs:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise ConfigError(
            f"config error: run '{cfg.run.name}' in '{run_dir}' was started with other model settings ({shown}), "
            f"so its checkpoints cannot resume under this config; choose a new run.name, or run the earlier "
            f"config again to resume it (nothing was changed in that folder)"
        )
