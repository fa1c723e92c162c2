"""teacher.prototypes and method.teacher_norm are validated like every other field: one line each."""

from __future__ import annotations

import pytest

from rob_ray.config import ConfigError, load_config


@pytest.mark.parametrize("overrides, message", [
    (["teacher.prototypes.fit.k=100", "teacher.prototypes.fit.images=50"],
     "config error: teacher.prototypes.fit: k (100) exceeds images (50): k-means needs at least one image per prototype"),
    (["teacher.prototypes.fit.kk=3"], "unknown key 'teacher.prototypes.fit.kk' (did you mean 'k'?); valid keys here: "
                                     "batch_size, engine, images, init, iterations, k, num_actors, seed, size"),
    (["teacher.prototypes.fit.k=1"], "teacher.prototypes.fit.k = 1: Input should be greater than or equal to 2"),
    (["teacher.prototypes.cache_dir=/tmp/x"], "teacher.prototypes: needs fit: {k: ..., images: ...}"),
    (["teacher.head_checkpoint=h.pth", "teacher.prototypes.head=p.pth"],
     "teacher.head_checkpoint and teacher.prototypes both give the teacher a head; keep one"),
    (["method.name=feature", "teacher.prototypes.fit.k=8"],
     "teacher.prototypes is set but method.name=feature uses no teacher prototypes"),
    (["method.teacher_norm=sinkhorn", "method.centering=ema"], "teacher_norm=sinkhorn balances the targets itself"),
    (["method.teacher_norm=balanced"], "method.teacher_norm = 'balanced': Input should be 'softmax' or 'sinkhorn'"),
])
def test_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_defaults_and_a_valid_section():
    cfg = load_config(None, ["teacher.prototypes.fit.k=64", "teacher.prototypes.fit.images=1000"])
    fit = cfg.teacher.prototypes.fit
    assert (fit.k, fit.images, fit.seed, fit.iterations, fit.init, fit.engine) == (64, 1000, 0, 20, "auto", "ray")
    assert cfg.method.teacher_norm == "softmax" and load_config(None, []).teacher.prototypes is None
