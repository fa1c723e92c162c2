"""Shared fixtures: real images (the shipped demo subset), tiny configs.

Tests use only files in the repository or files they generate: a user's fresh clone has no
../shared beside it (that copy of Imagenette is for benchmarks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "experiments" / "demo_data"


@pytest.fixture(scope="session")
def real_photos() -> Path:
    """The shipped Imagenette subset: ImageFolder `train/` (10 x 100) and `val/` (10 x 30), 112 px RGB JPEGs."""
    return DEMO_DATA


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    """A labelled ImageFolder of 48 real photos (4 classes x 12) from the shipped demo subset."""
    root = tmp_path / "images"
    for cls in sorted((DEMO_DATA / "train").iterdir())[:4]:
        (root / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:12]:
            shutil.copy(f, root / cls.name / f.name)
    return root


def can_compile() -> bool:
    """Whether torch.compile can build CPU code here (Inductor finds a C++ compiler); without one rob_ray's
    compiled teacher falls back to eager, and the tests check that instead."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:
        return False
    return True


def tiny_overrides(data_path: Path, storage: Path, name: str = "t") -> list[str]:
    """A config small enough for a CPU test step: 32/16 px crops, tiny student, small head."""
    return [
        f"data.path={data_path}", f"run.storage_path={storage}", f"run.name={name}",
        "augment.global_size=32", "augment.local_size=16", "augment.num_local=2",
        "student.arch=test_resnet", "student.head.hidden_dim=64", "student.head.bottleneck_dim=32",
        "optim.batch_size=8", "optim.epochs=2", "optim.warmup_epochs=0", "run.log_every_steps=1",
        "scaling.num_workers=0", "scaling.cpus_per_worker=1",
        "run.compile_teacher=false",  # ~5 s of compiling per run; tests/train/test_compiled_teacher.py covers it
    ]
