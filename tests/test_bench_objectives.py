"""The objective benchmark lists every method the config accepts (so none is skipped silently)."""

from __future__ import annotations

from experiments.bench_objectives import method_names
from rob_ray.config import _method_names


def test_bench_covers_every_selectable_method():
    names = method_names()
    assert len(names) == len(set(names)) and set(names) == _method_names()
    assert {"dino", "swav", "kd", "dino_scratch"} <= set(names)
