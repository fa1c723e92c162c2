"""How the step runs the teacher: eager, `torch.compile`d, or compiled *frozen* for inference.

A RoB teacher never changes during a run, so on CPU workers it is compiled with Inductor's freezing:
its weights become constants, BatchNorm folds into the convolutions, convolution weights are
prepacked for oneDNN and activations fuse into their kernels. On the demo (EfficientNet-Lite0 on 128
global crops of 64 px, 2 cores) the teacher's forward took 80 ms instead of 131 and the whole step ran
6-8 % faster, after 6-10 s of compiling once per worker (README, Performance). The students stay eager
on CPU: their training graphs ran slower compiled. GPU workers keep `run.compile` (teacher and
students compiled, lazily at the first step).

Frozen compilation is tried once, at set-up, on a batch of zeros shaped like the step's global crops:
a machine that cannot compile (no C++ compiler, an unsupported teacher) gets the eager teacher and a
one-line note instead of a failed run.

Plain torch (no Ray): the GPU box and the benchmarks use it without Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["TeacherMode", "prepare_teacher", "teacher_mode"]

TeacherMode = Literal["eager", "compiled", "frozen"]


def teacher_mode(compile_teacher: bool | None, compile_all: bool | None, *, is_cuda: bool,
                 frozen_teacher: bool) -> TeacherMode:
    """How to run the teacher.

    Args:
        compile_teacher: `run.compile_teacher` (None: a frozen teacher on CPU is compiled, else `compile_all`).
        compile_all: `run.compile` (None: on for GPU workers).
        is_cuda: the worker's device is a GPU.
        frozen_teacher: the method's teacher is pretrained and frozen (not an EMA of the student, whose
            weights change every step and so can never be compiled as constants).
    """
    if compile_teacher is None:
        compile_teacher = compile_all if compile_all is not None else (is_cuda or frozen_teacher)
    if not compile_teacher:
        return "eager"
    return "frozen" if frozen_teacher and not is_cuda else "compiled"


def prepare_teacher(teacher: nn.Module, mode: TeacherMode, example: torch.Tensor,
                    autocast: Callable[[], Any]) -> tuple[Callable[..., Any], str | None]:
    """(what the step calls as its teacher, a note for the log or None).

    `example`: a tensor shaped like the step's global crops (values unused) on the worker's device and in
    its memory format; `autocast`: the step's precision context, so the compiled graph is the one the
    step runs (a different shape or precision later only recompiles)."""
    if mode == "eager":
        return teacher, None
    if mode == "compiled":  # static shapes: fixed batch per worker, drop_last, unreadable rows kept
        return torch.compile(teacher, dynamic=False), None
    compiled = torch.compile(teacher, dynamic=False, options={"freezing": True})
    quiet = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found" on every CPU machine
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), autocast():
            compiled(example)
    except Exception as e:  # any failure to compile leaves the run on the eager teacher
        torch._dynamo.reset()
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        return teacher, (f"the teacher runs eagerly: compiling it failed on this machine ({type(e).__name__}: "
                         f"{reason}); set run.compile_teacher=false to skip the attempt")
    finally:
        quiet.setLevel(level)
    return compiled, None
