"""Name -> teacher builder registry (timm-style): `@register_teacher("kind")` + `build_teacher(cfg)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rob_ray.models.teachers.base import Teacher, TeacherLoadError

if TYPE_CHECKING:
    from rob_ray.config import TeacherConfig

__all__ = ["build_teacher", "list_teachers", "register_teacher"]

_BUILDERS: dict[str, Callable[[TeacherConfig], Teacher]] = {}


def register_teacher(kind: str) -> Callable:
    def deco(fn: Callable[[TeacherConfig], Teacher]) -> Callable[[TeacherConfig], Teacher]:
        _BUILDERS[kind] = fn
        return fn

    return deco


def list_teachers() -> list[str]:
    _import_builders()
    return sorted(_BUILDERS)


def _import_builders() -> None:
    # Lazy: importing a builder module registers it; none of them is imported before it is needed.
    from rob_ray.models.teachers import dino, efficientnet_lite, ibot, msn, state_dict, swav, timm_teacher  # noqa: F401


def build_teacher(cfg: TeacherConfig) -> Teacher:
    """Build the frozen teacher named by `cfg.kind` (or `cfg.name`, a catalogue entry). Raises TeacherLoadError."""
    from rob_ray.models.teachers.catalogue import resolve_teacher_config

    _import_builders()
    cfg = resolve_teacher_config(cfg)
    builder = _BUILDERS.get(cfg.kind)
    if builder is None:
        raise TeacherLoadError(f"teacher.kind '{cfg.kind}' is unknown; choose one of: {', '.join(sorted(_BUILDERS))}")
    try:
        teacher = builder(cfg)
    except TeacherLoadError:
        raise
    except RuntimeError as exc:  # torch's loading errors (shape / key mismatches): one line, never a 100-line dump
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "mismatch" in ln or "key" in ln.lower()), lines[0] if lines else "")
        raise TeacherLoadError(
            f"teacher '{cfg.checkpoint or cfg.name or cfg.kind}' could not be loaded as kind={cfg.kind} "
            f"arch={cfg.arch or '(from the file)'} ({detail[:240]}); check teacher.kind / teacher.arch"
        ) from None
    if getattr(cfg, "prototypes", None) is not None:  # fitted prototypes replace whatever head it has
        from rob_ray.models.teachers.headless import apply_prototypes

        teacher = apply_prototypes(teacher, cfg)
    return teacher
