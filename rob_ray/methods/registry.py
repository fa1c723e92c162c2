"""The method registry (timm's `register_model` / `create_model` pattern): one `MethodEntry` per method,
registered by the method's own module, and the few functions everything else asks.

An entry says everything the rest of rob_ray needs to know about a method:
- `config`: its pydantic config class (`method.name` selects it), or that class's name in `rob_ray.config`
  (a reference, resolved on first use: a method module then imports without pydantic, as the GPU
  benchmark box needs);
- `method`: its `Method` subclass (the step and its per-step hooks: EMA, centre, queue);
- `needs`: what it needs from teacher and student (names of `rob_ray.methods.needs` rules, or a function
  of the method config giving them), checked once before launch by `check_needs`;
- `head_width`: what the student head must output for this teacher (K prototypes, the prototypes'
  dimension D, the teacher's embedding width, ...), with a word naming it for error messages;
- `build_loss` / `build_student`: the loss module and a fresh student (head sized from the teacher);
- `restore_student`: a trained student from a checkpoint's state (no teacher needed: shapes come from
  the config and the state), so `eval` and `export` see exactly the trained network;
- `teacher`: "pretrained" (a teacher file) or "ema" (built from the student by `build_teacher`).

`register_method` refuses an entry missing a required piece, at import, with one line naming the piece.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

    from rob_ray.config import Config

__all__ = ["METHOD_MODULES", "MethodEntry", "MethodRegistryError", "get_method", "list_methods", "register_method"]

# The modules that register the built-in methods (imported lazily, on the first registry query).
METHOD_MODULES = ("dino", "feature", "ibot", "msn", "swav", "kd", "dino_scratch")

_ENTRIES: dict[str, MethodEntry] = {}
_REQUIRED = ("config", "method", "build_loss", "build_student", "restore_student", "head_width")


class MethodRegistryError(TypeError):
    """A registry entry is malformed (a programming error in a method module, raised at its import)."""


@dataclass(frozen=True)
class MethodEntry:
    """One method. Callables take plain objects: `cfg` is the whole `Config`, `teacher` the built teacher.

    build_loss(method_cfg, teacher) -> nn.Module
    build_student(cfg, teacher) -> nn.Module            (teacher is None for teacher="ema")
    restore_student(cfg, state) -> nn.Module            (state: the checkpoint's `student` state_dict)
    head_width(cfg, teacher) -> (int, what)             (what the student head must output, e.g. "prototype count")
    method_kwargs(method_cfg) -> dict                   (extra keyword arguments of `method`)
    build_teacher(cfg, student) -> nn.Module            (only for teacher="ema")
    """

    name: str
    config: type | str
    method: type
    build_loss: Callable[[Any, Any], nn.Module]
    build_student: Callable[[Config, Any], nn.Module]
    restore_student: Callable[[Config, dict], nn.Module]
    head_width: Callable[[Config, Any], tuple[int, str]]
    needs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    method_kwargs: Callable[[Any], dict[str, Any]] = lambda _m: {}
    teacher: Literal["pretrained", "ema"] = "pretrained"
    build_teacher: Callable[[Config, Any], nn.Module] | None = None
    summary: str = ""

    def needs_for(self, method_cfg: Any) -> tuple[str, ...]:
        return tuple(self.needs(method_cfg) if callable(self.needs) else self.needs)

    @property
    def config_class(self) -> type:
        if isinstance(self.config, str):
            return getattr(importlib.import_module("rob_ray.config"), self.config)
        return self.config


def _check_config(entry: MethodEntry) -> None:
    where = f"method entry '{entry.name}'"
    try:
        cls = entry.config_class
    except AttributeError:
        raise MethodRegistryError(f"{where}: rob_ray.config has no class '{entry.config}'") from None
    tag = getattr(cls, "model_fields", {}).get("name")
    if tag is None or tag.default != entry.name:
        raise MethodRegistryError(f"{where}: its config class {cls.__name__} must have name = '{entry.name}'")


def register_method(entry: MethodEntry) -> MethodEntry:
    """Add `entry`; raises MethodRegistryError naming the missing or wrong piece."""
    where = f"method entry '{getattr(entry, 'name', '?')}'"
    if not isinstance(entry, MethodEntry):
        raise MethodRegistryError(f"register_method takes a MethodEntry, got {type(entry).__name__}")
    if not entry.name or not isinstance(entry.name, str):
        raise MethodRegistryError("a method entry needs a non-empty name")
    for piece in _REQUIRED:
        value = getattr(entry, piece, None)
        ok = isinstance(value, str) and value if piece == "config" else callable(value)
        if value is None or not ok:
            raise MethodRegistryError(f"{where} is missing '{piece}'; every entry needs {', '.join(_REQUIRED)} "
                                      "(config: a class or its name in rob_ray.config; the others callables)")
    if not isinstance(entry.config, str) or "rob_ray.config" in sys.modules:
        _check_config(entry)  # else (a name, pydantic not loaded yet): on the first registry query
    from rob_ray.methods.base import Method

    if not (isinstance(entry.method, type) and issubclass(entry.method, Method)):
        raise MethodRegistryError(f"{where}: 'method' must be a rob_ray.methods.base.Method subclass")
    if entry.teacher not in ("pretrained", "ema"):
        raise MethodRegistryError(f"{where}: teacher must be 'pretrained' or 'ema', got '{entry.teacher}'")
    if entry.teacher == "ema" and not callable(entry.build_teacher):
        raise MethodRegistryError(f"{where}: teacher='ema' needs build_teacher(cfg, student)")
    if not callable(entry.needs):
        from rob_ray.methods.needs import RULES

        unknown = [n for n in entry.needs if n not in RULES]
        if unknown:
            raise MethodRegistryError(f"{where}: unknown needs {unknown}; known: {', '.join(sorted(RULES))}")
    if entry.name in _ENTRIES and _ENTRIES[entry.name] is not entry:
        raise MethodRegistryError(f"{where} is registered twice")
    _ENTRIES[entry.name] = entry
    return entry


_CHECKED: set[str] = set()


def _import_entries() -> None:
    for module in METHOD_MODULES:
        importlib.import_module(f"rob_ray.methods.{module}")
    for entry in list(_ENTRIES.values()):
        if entry.name not in _CHECKED:
            try:
                _check_config(entry)
            except MethodRegistryError:
                del _ENTRIES[entry.name]
                raise
            _CHECKED.add(entry.name)


def list_methods() -> list[str]:
    _import_entries()
    return sorted(_ENTRIES)


def get_method(name: str) -> MethodEntry:
    """The entry for `method.name`; an unknown name is a ConfigError listing the registered ones."""
    _import_entries()
    entry = _ENTRIES.get(name)
    if entry is None:
        from rob_ray.errors import ConfigError

        raise ConfigError(f"config error: method.name '{name}' is not registered; choose one of {', '.join(sorted(_ENTRIES))}")
    return entry
