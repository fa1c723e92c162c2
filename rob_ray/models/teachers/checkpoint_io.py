"""Safe reading of weight files: `torch.load(weights_only=True)` or safetensors, nothing else."""

from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from rob_ray.models.teachers.base import TeacherLoadError

__all__ = ["SAFE_GLOBALS", "find_state_dict", "load_weights", "strip_prefix"]

# Released SSL training checkpoints (DINO, iBOT) keep their argparse.Namespace `args`; that
# type holds plain values and is safe to rebuild. Every other pickled class is refused.
SAFE_GLOBALS: list[Any] = [argparse.Namespace]


def load_weights(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file into a dict without executing arbitrary pickled code."""
    p = Path(path)
    if not p.is_file():
        raise TeacherLoadError(f"teacher checkpoint '{p}' not found; check teacher.checkpoint")
    if p.stat().st_size == 0:
        raise TeacherLoadError(f"teacher checkpoint '{p}' is empty (0 bytes); download it again")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise TeacherLoadError(f"teacher checkpoint '{p}' is not a valid safetensors file ({exc})") from None
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unpickling refused"
        raise TeacherLoadError(
            f"teacher checkpoint '{p}' needs arbitrary unpickling, which rob_ray refuses for safety "
            f"({first[:160]}); re-save it as a plain state_dict or .safetensors"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise TeacherLoadError(
            f"teacher checkpoint '{p}' is truncated or not a PyTorch file ({type(exc).__name__}); download it again"
        ) from None
    if not isinstance(obj, dict):
        raise TeacherLoadError(f"teacher checkpoint '{p}' holds a {type(obj).__name__}, not a dict of weights")
    return obj


def strip_prefix(state: dict[str, Any], *prefixes: str) -> dict[str, Any]:
    """Remove DDP / wrapper prefixes (`module.`, `backbone.`...) wherever every key has them."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def find_state_dict(obj: dict[str, Any], *candidates: str) -> dict[str, Any]:
    """The first nested dict of tensors under one of `candidates`, else `obj` itself."""
    for key in candidates:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
