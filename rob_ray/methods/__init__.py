"""Methods: one module per objective, each registering a `MethodEntry` (rob_ray/methods/registry.py);
`build_method` / `build_models` / `restore_student` ask the registry, never an if-chain."""

from __future__ import annotations

from typing import Any

from rob_ray.methods.base import Method, StepOutput, Views
from rob_ray.methods.models import build_models, needs_pretrained_teacher, restore_student
from rob_ray.methods.registry import MethodEntry, get_method, list_methods, register_method

__all__ = ["Method", "MethodEntry", "StepOutput", "Views", "build_method", "build_models", "get_method",
           "list_methods", "needs_pretrained_teacher", "register_method", "restore_student"]


def build_method(method_cfg: Any, teacher: Any, student: Any) -> Method:
    """The method object for `cfg.method`: its loss (built from the teacher) and its per-step state.

    `student` must come from the same entry's `build_student` (`build_models`), which gives it the
    method's head and parts (iBOT mask token, MSN projector, SwAV head, KD classifier)."""
    entry = get_method(method_cfg.name)
    return entry.method(teacher, student, entry.build_loss(method_cfg, teacher), **entry.method_kwargs(method_cfg))
