"""Safe reading of weight files: `torch.load(weights_only=True)` or safetensors, nothing else."""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from rob_ray.models.teachers.base import TeacherLoadError

__all__ = ["SAFE_GLOBALS", "apply_key_map", "find_state_dict", "load_fitting", "load_weights", "strip_prefix"]


def _safe_globals() -> list[Any]:
    """The allow-list, from reading what the official training scripts pickle:
    - DINO `main_dino.py` / iBOT `main_ibot.py`: `{student, teacher, optimizer, epoch, args, dino_loss|ibot_loss,
      fp16_scaler}` -> only `argparse.Namespace` is a class; the rest are dicts, tensors, ints, floats.
    - MSN `msn_train.py`: `{encoder, target_encoder, prototypes, opt, epoch, loss, batch_size, world_size, lr,
      temperature}` -> plain Python numbers and tensors (loss is `float(...)` averaged), nothing else.
    - SwAV: released `*_pretrain.pth.tar` are bare state_dicts; training checkpoints add `{epoch, optimizer, amp}`.
    numpy scalars / dtypes are data, not code; third-party state_dicts (timm trainers) sometimes hold them,
    so they are allowed too (under both numpy 1 and numpy 2 module names). Everything else is refused."""
    allowed: list[Any] = [argparse.Namespace]
    try:
        import numpy as np

        scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
        allowed += [np.dtype, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
        allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    except (ImportError, AttributeError):  # numpy is optional for reading weights
        pass
    return allowed


SAFE_GLOBALS: list[Any] = _safe_globals()


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
        raise TeacherLoadError(
            f"teacher checkpoint '{p}' needs arbitrary unpickling ({_refused_globals(p, exc)}), which rob_ray refuses "
            "because unpickling can run code; re-save it as a plain state_dict (torch.save(model.state_dict())) "
            "or .safetensors"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, IndexError, ValueError, KeyError, TypeError) as exc:
        # Garbage bytes reach torch's legacy unpickler, which fails with whatever error the bytes provoke.
        raise TeacherLoadError(
            f"teacher checkpoint '{p}' is truncated or not a PyTorch file ({type(exc).__name__}); download it again"
        ) from None
    if not isinstance(obj, dict):
        raise TeacherLoadError(f"teacher checkpoint '{p}' holds a {type(obj).__name__}, not a dict of weights")
    return obj


def _refused_globals(p: Path, exc: Exception) -> str:
    """Name the pickled classes/functions that are not on the allow-list (the reason for refusing)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(p))
    except Exception:  # not a zip checkpoint (legacy format): fall back to torch's message
        names = []
    allowed = {f"{g.__module__}.{g.__qualname__}" if not isinstance(g, tuple) else g[1] for g in SAFE_GLOBALS}
    names = [n for n in names if n not in allowed]
    if names:
        return "it pickles " + ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    first = str(exc).strip().splitlines()
    return first[0][:160] if first else "unpickling refused"


def apply_key_map(state: dict[str, Any], key_map: dict[str, str] | None) -> dict[str, Any]:
    """Rename keys with ordered `{regex: replacement}` rules (`re.sub`, every rule applied in turn);
    a key renamed to '' is dropped. Two source keys landing on one name is an error."""
    if not key_map:
        return dict(state)
    try:
        rules = [(re.compile(pat), rep) for pat, rep in key_map.items()]
    except re.error as exc:
        raise TeacherLoadError(f"teacher.key_map has an invalid regex ({exc}); fix the pattern") from None
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = key
        for rx, rep in rules:
            new = rx.sub(rep, new)
        if not new:
            continue
        if new in out:
            raise TeacherLoadError(f"teacher.key_map maps two keys onto '{new}' (one of them '{key}'); make the rules specific")
        out[new] = value
    return out


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


def load_fitting(model: torch.nn.Module, state: dict[str, Any], *, source: str, arch: str | None) -> tuple[list, list]:
    """`model.load_state_dict(state, strict=False)`, but a tensor whose shape differs from the model's is one
    TeacherLoadError line naming the file, the architecture and the first mismatch (torch would raise a
    RuntimeError listing every tensor: 151 lines for a ViT-S file read as a ViT-B). Returns (missing, unexpected)."""
    own = model.state_dict()
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
           if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        key, got, want = bad[0]
        raise TeacherLoadError(
            f"{source} does not fit architecture '{arch or type(model).__name__}': {len(bad)} tensors differ in shape "
            f"(e.g. {key}: file {list(got)} vs model {list(want)}); set teacher.arch to the model the file was saved from"
        )
    return model.load_state_dict(state, strict=False)
