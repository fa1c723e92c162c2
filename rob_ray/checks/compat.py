"""Teacher / student / config compatibility, checked in the driver before Ray starts.

Each check is a plain function over plain values (so tests can hit every branch) returning problems as
one-line strings that name both sides and the fix. `check_compatibility` runs them all for a config:
1. student head width = what the method matches (the registry entry's `head_width`: K prototypes, the
   prototypes' dimension D for SwAV / MSN, the teacher embedding for `feature`, ...);
2. crop sizes are multiples of the ViT patch size (teacher: global crops; ViT student: every crop),
   unless the patch embedding pads dynamically;
3. normalisation: the teacher's mean/std = its catalogue entry's; a pretrained student trained on other
   statistics is a warning (its inputs are normalised for the teacher);
4. feature widths measured by one probe forward, against the attributes the heads were sized from;
5. the method's needs (its registry entry names them; the rules are `rob_ray.methods.needs`);
(The memory estimate is `rob_ray.checks.memory`, run by preflight.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "CompatReport",
    "check_compatibility",
    "check_feature_widths",
    "check_head_width",
    "check_method_needs",
    "check_normalisation",
    "check_patch_sizes",
    "head_output_width",
    "patch_size_of",
    "summary",
]



@dataclass
class CompatReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def patch_size_of(model: nn.Module) -> int | None:
    """ViT patch size from `patch_embed.patch_size` (None for CNNs)."""
    pe = getattr(model, "patch_embed", None)
    ps = getattr(pe, "patch_size", None)
    if ps is None:
        return None
    return int(ps[0]) if isinstance(ps, tuple | list) else int(ps)


def _pads(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "patch_embed", None), "dynamic_img_pad", False))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Probe forwards run in eval mode (a 1-image batch through BatchNorm in train mode fails) and restore it."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


# ---------------------------------------------------------------- 1. head width


def check_head_width(method: str, teacher_name: str, expected: int, student_out: int | None, configured: int | None,
                     what: str = "prototype count") -> list[str]:
    """The student head must output what the method compares against (`what`: the registry entry's
    `head_width` says which: K prototypes, the prototypes' dimension D for SwAV/MSN, D for `feature`, ...)."""
    if configured is not None and configured != expected:
        return [f"config error: student.head.out_dim = {configured} but teacher '{teacher_name}' {what} is {expected} "
                f"(method {method}); remove student.head.out_dim or set it to {expected}"]
    if student_out is not None and student_out != expected:
        return [f"config error: the student head outputs {student_out} but teacher '{teacher_name}' {what} is {expected} "
                f"(method {method}); leave student.head.out_dim unset so it follows the teacher"]
    return []


# ---------------------------------------------------------------- 2. patch sizes


def check_patch_sizes(global_size: int, local_size: int, num_local: int, teacher_patch: int | None,
                      student_patch: int | None, teacher_pads: bool = False, student_pads: bool = False) -> list[str]:
    """Teacher: global crops only. ViT student: global and local crops."""
    out = []

    def fix(size: int, patch: int) -> int:
        return max(patch, size - size % patch)

    if teacher_patch and not teacher_pads and global_size % teacher_patch:
        out.append(f"config error: augment.global_size = {global_size} is not a multiple of the teacher's patch size "
                   f"{teacher_patch}; use {fix(global_size, teacher_patch)}")
    if student_patch and not student_pads:
        for key, size, used in (("global_size", global_size, True), ("local_size", local_size, num_local > 0)):
            if used and size % student_patch:
                out.append(f"config error: augment.{key} = {size} is not a multiple of the student ViT's patch size "
                           f"{student_patch}; use {fix(size, student_patch)}")
    return out


# ---------------------------------------------------------------- 3. normalisation


def _close(a, b, tol: float = 2e-3) -> bool:
    return a is not None and b is not None and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))


def check_normalisation(teacher_name: str, teacher_norm: tuple, catalogue_name: str | None = None,
                        catalogue_norm: tuple | None = None, student_arch: str | None = None,
                        student_norm: tuple | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings). Norms are ((mean...), (std...)) tuples."""
    errors, warnings = [], []
    t_mean, t_std = teacher_norm
    if catalogue_norm is not None and not (_close(t_mean, catalogue_norm[0]) and _close(t_std, catalogue_norm[1])):
        errors.append(
            f"config error: teacher '{teacher_name}' normalises with mean {_fmt(t_mean)} std {_fmt(t_std)} "
            f"but catalogue entry '{catalogue_name}' was trained with mean {_fmt(catalogue_norm[0])} "
            f"std {_fmt(catalogue_norm[1])}; the file is not that entry's (check teacher.checkpoint / teacher.arch)")
    if student_norm is not None and not (_close(t_mean, student_norm[0]) and _close(t_std, student_norm[1])):
        warnings.append(
            f"warning: student.pretrained '{student_arch}' was trained with mean {_fmt(student_norm[0])} std "
            f"{_fmt(student_norm[1])} but crops are normalised for teacher '{teacher_name}' (mean {_fmt(teacher_norm[0])}); "
            "set student.pretrained=false, or accept the input shift")
    return errors, warnings


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.3g}" for x in v) + ")"


# ---------------------------------------------------------------- 4. feature widths


def _head_in(head: nn.Module) -> int | None:
    if hasattr(head, "in_dim"):
        return int(head.in_dim)
    first = next((m for m in head.modules() if isinstance(m, nn.Linear)), None)
    return int(first.in_features) if first is not None else None


@torch.no_grad()
def check_feature_widths(teacher: nn.Module, student: nn.Module, teacher_probe: torch.Tensor,
                         student_probe: torch.Tensor) -> list[str]:
    """Measure the embedding widths with one forward each and compare them with the attributes used to size heads."""
    out = []
    with _eval_mode(teacher):  # an EMA teacher stays in train mode; a 1-image probe needs eval-mode BatchNorm
        t_emb = teacher.embed(teacher_probe)
    if t_emb.shape[-1] != teacher.embed_dim:
        out.append(f"teacher error: '{teacher.name}' declares embed_dim {teacher.embed_dim} but its backbone returns "
                   f"{t_emb.shape[-1]}-d features; the loader read the wrong width attribute (num_features vs head_hidden_size)")
    head_in = _head_in(teacher.head)
    if head_in is not None and head_in != t_emb.shape[-1]:
        out.append(f"teacher error: '{teacher.name}' head reads {head_in}-d features but its backbone returns "
                   f"{t_emb.shape[-1]}-d; load the head trained with this backbone")
    with _eval_mode(student):
        s_emb = student.embed(student_probe)
    s_in = _head_in(student.head)
    if s_in is not None and s_in != s_emb.shape[-1]:
        out.append(f"config error: the student head reads {s_in}-d features but student.feature="
                   f"{getattr(student, 'feature', '?')} gives {s_emb.shape[-1]}-d; the head was sized from the wrong "
                   "attribute (pre_logits: head_hidden_size, pooled: num_features)")
    return out


# ---------------------------------------------------------------- 5. method needs


def check_method_needs(cfg, teacher: nn.Module, student: nn.Module | None = None) -> list[str]:
    """The method's needs (its registry entry lists them; the rules live in `rob_ray.methods.needs`)."""
    from rob_ray.methods.needs import check_needs

    return check_needs(cfg, teacher, student)


def head_output_width(head: nn.Module) -> int | None:
    """What a student head outputs in the space the method compares: `out_dim` (DINO head: K; SwAV / MSN
    projection: D), a Linear's `out_features` (KD classifier), else None (unknown: not checked)."""
    if hasattr(head, "out_dim"):
        return int(head.out_dim)
    if isinstance(head, nn.Linear):
        return int(head.out_features)
    return None


# ---------------------------------------------------------------- all checks for a config


def _probe(model: nn.Module, size: int) -> torch.Tensor:
    patch = patch_size_of(getattr(model, "backbone", model))
    s = patch * max(1, round(size / patch)) if patch else size
    return torch.zeros(1, 3, s, s)


def check_compatibility(cfg, teacher: nn.Module, student: nn.Module, probe_size: int = 64) -> CompatReport:
    """Run every shape / normalisation / needs check for `cfg` (memory: `rob_ray.checks.memory`, by preflight)."""
    from rob_ray.methods.registry import get_method

    rep = CompatReport()
    method = cfg.method.name
    rep.errors += check_method_needs(cfg, teacher)
    if rep.errors:
        return rep  # the head width below reads what the teacher needs guarantee (prototypes, head)
    expected, what = get_method(method).head_width(cfg, teacher)
    rep.errors += check_head_width(method, teacher.name, expected, head_output_width(student.head),
                                   cfg.student.head.out_dim, what)
    s_backbone = getattr(student, "backbone", student)
    rep.errors += check_patch_sizes(cfg.augment.global_size, cfg.augment.local_size, cfg.augment.num_local,
                                    teacher.patch_size, patch_size_of(s_backbone), _pads(teacher.backbone), _pads(s_backbone))
    cat_name, cat_norm = getattr(cfg.teacher, "name", None), None
    if cat_name:
        from rob_ray.models.teachers.catalogue import catalogue_entry, norm_of

        cat_norm = norm_of(catalogue_entry(cat_name))
    s_norm = None
    if cfg.student.pretrained:
        pc = getattr(s_backbone, "pretrained_cfg", None) or {}
        s_norm = (tuple(pc["mean"]), tuple(pc["std"])) if "mean" in pc and "std" in pc else None
    errs, warns = check_normalisation(teacher.name, (teacher.mean, teacher.std), cat_name, cat_norm,
                                      cfg.student.arch, s_norm)
    rep.errors += errs
    rep.warnings += warns
    rep.errors += check_method_needs(cfg, teacher, student)
    if rep.errors:
        return rep  # the probes below assume the shapes above are right
    t_probe, s_probe = _probe(teacher, probe_size), _probe(student, probe_size)
    rep.errors += check_feature_widths(teacher, student, t_probe, s_probe)
    return rep


def summary(rep: CompatReport) -> dict[str, Any]:
    """What preflight puts into the plan."""
    out: dict[str, Any] = {}
    if rep.warnings:
        out["warnings"] = rep.warnings
    if rep.notes:
        out["notes"] = rep.notes
    return out
