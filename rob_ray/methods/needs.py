"""What a method can need from its teacher and student: every rule written once, here.

A method's registry entry lists the rules it needs by name (`MethodEntry.needs`); `check_needs` runs
them, before launch (preflight, `--dry-run`) and whenever `build_models` builds a pair, and returns one
line per failure naming both sides and the fix. Rules of stage "teacher" run before the student is
built (its head is sized from what they guarantee); stage "student" rules run on the built student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

__all__ = ["RULES", "Rule", "check_needs", "is_vit", "raise_first"]


def is_vit(backbone: nn.Module) -> bool:
    """A timm VisionTransformer with a class token (what iBOT masking / MSN token dropping work on)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(backbone, VisionTransformer) and getattr(backbone, "cls_token", None) is not None


@dataclass(frozen=True)
class Rule:
    stage: Literal["teacher", "student"]
    check: Callable[[Any, Any, Any], str | None]  # (cfg, teacher, student or None) -> problem or None


def _teacher_head(cfg, teacher, _student) -> str | None:
    if getattr(teacher, "has_ssl_head", True):
        return None
    return (f"config error: teacher '{teacher.name}' has no SSL head, so method '{cfg.method.name}' has no prototypes to "
            "match; set teacher.head_checkpoint to its head file, or use method.name=feature (embedding regression)")


def _teacher_prototypes(cfg, teacher, _student) -> str | None:
    import torch

    protos = getattr(teacher, "prototypes", None)
    if isinstance(protos, torch.Tensor) and protos.ndim == 2:
        return None
    m = cfg.method.name
    extra = " or method.prototypes=student" if m == "swav" else ""
    return (f"config error: method.name={m} needs a teacher with frozen prototypes (a (K, D) matrix) but teacher "
            f"'{teacher.name}' has none (teacher.prototypes is unset); use a {m.upper()} checkpoint "
            f"(teacher.kind={m}){extra}")


def _teacher_patch_head(cfg, teacher, _student) -> str | None:
    if getattr(teacher, "has_patch_head", False):
        return None
    return (f"config error: method.name={cfg.method.name} needs a teacher with a patch head but teacher '{teacher.name}' "
            "has none (has_patch_head is false); use an iBOT checkpoint (teacher.kind=ibot) or method.name=dino")


def _patch_prototypes_match(cfg, teacher, _student) -> str | None:
    patch_k = getattr(getattr(teacher, "head", None), "patch_out_dim", teacher.num_prototypes)
    if patch_k == teacher.num_prototypes:
        return None
    return (f"config error: teacher '{teacher.name}' has {patch_k} patch prototypes but {teacher.num_prototypes} CLS "
            "prototypes; the shared student head needs equal counts (or set method.lambda2=0)")


def _vit_student(cfg, _teacher, student) -> str | None:
    if is_vit(getattr(student, "backbone", student)):
        return None
    return (f"config error: method.name={cfg.method.name} masks ViT patch tokens, so student.arch must be a ViT with a "
            f"class token, but '{cfg.student.arch}' is not; use e.g. student.arch=vit_small_patch16_224")


RULES: dict[str, Rule] = {
    "teacher_head": Rule("teacher", _teacher_head),
    "teacher_prototypes": Rule("teacher", _teacher_prototypes),
    "teacher_patch_head": Rule("teacher", _teacher_patch_head),
    "patch_prototypes_match": Rule("teacher", _patch_prototypes_match),
    "vit_student": Rule("student", _vit_student),
}


def check_needs(cfg: Any, teacher: Any, student: Any = None) -> list[str]:
    """One line per unmet need of `cfg.method` (teacher rules always; student rules when `student` is given).

    The teacher rules are ordered: once one fails, the rest (which may assume it) are not run."""
    from rob_ray.methods.registry import get_method

    out = []
    for name in get_method(cfg.method.name).needs_for(cfg.method):
        rule = RULES[name]
        if rule.stage == "student" and student is None:
            continue
        problem = rule.check(cfg, teacher, student)
        if problem:
            out.append(problem)
            if rule.stage == "teacher":
                break
    return out


def raise_first(problems: list[str]) -> None:
    if problems:
        from rob_ray.errors import ConfigError

        raise ConfigError(problems[0])
