"""Bad data never stops a run: odd files are converted, broken ones skipped, counted and logged."""

from __future__ import annotations

import logging

import numpy as np

from rob_ray.config import load_config
from rob_ray.data import decode_rgb, scan_images
from rob_ray.train import LocalContext
from rob_ray.train.loop import train_loop
from tests.bad_images import make_corpus
from tests.conftest import tiny_overrides


def test_each_generated_file_is_converted_or_refused(real_photos, tmp_path):
    _, convertible, bad = make_corpus(tmp_path / "c", real_photos, num_real=1)
    for path in convertible:
        arr = decode_rgb(path.read_bytes())
        assert arr is not None and arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8, path.name
    for path in bad:
        assert decode_rgb(path.read_bytes()) is None, path.name


def test_run_over_a_corpus_with_bad_files_counts_exactly_the_bad_ones(real_photos, tmp_path, caplog):
    # 49 real + 9 convertible + 6 bad = 64 images = 8 steps of 8: one epoch sees every file once.
    real, convertible, bad = make_corpus(tmp_path / "c", real_photos, num_real=49)
    table = scan_images(tmp_path / "c")
    assert len(table) == len(real) + len(convertible) + len(bad) == 64
    cfg = load_config(None, tiny_overrides(tmp_path / "c", tmp_path, "bad") + ["optim.epochs=1"])
    ctx = LocalContext(table, tmp_path / "bad")
    with caplog.at_level(logging.WARNING, logger="rob_ray.data.mapper"):
        metrics = train_loop(cfg, ctx, len(table))
    assert metrics["step"] == 8 and np.isfinite(metrics["loss"])
    assert metrics["skipped_images"] == len(bad) == 6
    logged = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(logged) == 5  # the first few, not one line per bad file forever
    assert all(any(str(p) in line for p in bad) for line in logged)
