"""Fixtures for the evaluation tests: a tiny labelled train/val folder and a tiny trained run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from rob_ray.config import load_config
from rob_ray.data import scan_images
from rob_ray.train import LocalContext
from rob_ray.train.loop import train_loop
from tests.conftest import DEMO_DATA, tiny_overrides


@pytest.fixture(scope="session")
def labelled_root(tmp_path_factory) -> Path:
    """Real photos: 4 classes, 10 train + 5 val images each, ImageFolder train/ + val/."""
    root = tmp_path_factory.mktemp("labelled")
    for split, n in (("train", 10), ("val", 5)):
        for cls in sorted((DEMO_DATA / split).iterdir())[:4]:
            (root / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copy(f, root / split / cls.name / f.name)
    return root


@pytest.fixture(scope="session")
def tiny_run(labelled_root, tmp_path_factory) -> Path:
    """A 2-epoch local run (40 images, batch 8: 5 steps/epoch) with online k-NN every epoch."""
    storage = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, tiny_overrides(labelled_root / "train", storage, "tiny") + [
        "eval.online_knn_every_epochs=1", f"eval.online_knn_path={labelled_root}", "run.log_every_steps=2"])
    table = scan_images(cfg.data.path)
    threads = torch.get_num_threads()
    train_loop(cfg, LocalContext(table, cfg.run_dir(), num_to_keep=1), len(table))
    torch.set_num_threads(threads)
    return cfg.run_dir()
