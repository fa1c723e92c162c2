"""Which teacher and student a method trains with, asked of the method registry (the one place the loop,
preflight, the k-NN report, eval and export go through): a pretrained teacher sizes the student's head;
SSL-from-scratch builds its teacher (an EMA copy) from the student. `restore_student` rebuilds a trained
student from a checkpoint exactly as it was trained, without loading the teacher."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from rob_ray.config import Config

__all__ = ["build_models", "dino_student", "input_normalisation", "needs_pretrained_teacher", "restore_student",
           "state_shape"]


def needs_pretrained_teacher(method_cfg: Any) -> bool:
    from rob_ray.methods.registry import get_method

    return get_method(method_cfg.name).teacher == "pretrained"


def build_models(cfg: Config, teacher: Any = None) -> tuple[nn.Module, nn.Module]:
    """(teacher, student) for `cfg.method`; pass an already built pretrained `teacher` to reuse it.

    The method's needs (`rob_ray.methods.needs`) are checked here, so a mismatch is one ConfigError line."""
    from rob_ray.methods.needs import check_needs, raise_first
    from rob_ray.methods.registry import get_method

    entry = get_method(cfg.method.name)
    if entry.teacher == "ema":
        student = entry.build_student(cfg, None)
        return entry.build_teacher(cfg, student), student
    if teacher is None:
        from rob_ray.models import build_teacher

        # The teacher's construction must not consume the global RNG: the student's initial weights
        # then depend on the seed alone, so the k-NN report's "untrained" student is the run's step 0.
        with torch.random.fork_rng(devices=[]):
            teacher = build_teacher(cfg.teacher)
    raise_first(check_needs(cfg, teacher))
    student = entry.build_student(cfg, teacher)
    raise_first(check_needs(cfg, teacher, student))
    return teacher, student


def input_normalisation(cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the student's crops were normalised with: its teacher's (an EMA teacher: ImageNet's)."""
    from rob_ray.models.teachers.base import IMAGENET_MEAN, IMAGENET_STD

    if not needs_pretrained_teacher(cfg.method):
        return IMAGENET_MEAN, IMAGENET_STD
    from rob_ray.models import build_teacher

    teacher = build_teacher(cfg.teacher)
    return teacher.mean, teacher.std


def restore_student(cfg: Config, state: dict[str, torch.Tensor]) -> nn.Module:
    """The trained student of a checkpoint (`state` = its `student` state_dict), loaded strictly.

    Raises CheckpointError (one line) when the state does not fit the network the config describes."""
    from rob_ray.errors import CheckpointError
    from rob_ray.methods.registry import get_method

    entry = get_method(cfg.method.name)
    with torch.random.fork_rng(devices=[]):  # the skeleton's random init is overwritten: keep the RNG as it was
        student = entry.restore_student(cfg, state)
    try:
        student.load_state_dict(state)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc)[:160])
        raise CheckpointError(f"the checkpoint's student does not fit method '{cfg.method.name}' with student.arch "
                              f"'{cfg.student.arch}' ({detail}); was it written by another config?") from None
    return student.eval()


def state_shape(state: dict[str, torch.Tensor], key: str, dim: int = 0) -> int:
    """`state[key].shape[dim]`, or a CheckpointError naming the missing key."""
    if key not in state:
        from rob_ray.errors import CheckpointError

        raise CheckpointError(f"the checkpoint's student has no '{key}'; it was not trained with this method")
    return int(state[key].shape[dim])


def dino_student(cfg: Config, out_dim: int) -> nn.Module:
    """timm backbone + DINO head with `out_dim` prototypes (student.head.out_dim wins when set)."""
    from rob_ray.models import build_student

    return build_student(cfg.student, out_dim=out_dim)
