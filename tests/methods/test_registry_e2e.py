"""Every registered method, end to end through the CLI, with a small teacher in its official layout:
pre-launch checks (--dry-run), a tiny CPU run, `eval --protocol knn` on its checkpoint, and `export`
(timm-loaded backbone = the trained student within 1e-5; ONNX on onnxruntime within 1e-4).

Driven by the registry: a new method is covered as soon as it is registered (and fails here until
tests/method_fixtures.py gives it a fixture teacher)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rob_ray.cli import DEMO_CONFIG, main
from rob_ray.config import Config, load_config
from rob_ray.data import scan_images
from rob_ray.methods import list_methods, restore_student
from rob_ray.train import LocalContext
from rob_ray.train.checkpoint import load_state
from rob_ray.train.loop import train_loop
from tests.conftest import DEMO_DATA, tiny_overrides
from tests.method_fixtures import METHOD_TEACHERS, method_overrides


def test_every_registered_method_has_a_fixture():
    assert set(list_methods()) == set(METHOD_TEACHERS)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Real photos, 4 classes: 8 train + 3 val images each (ImageFolder train/ + val/)."""
    root = tmp_path_factory.mktemp("labelled")
    for split, n in (("train", 8), ("val", 3)):
        for cls in sorted((DEMO_DATA / split).iterdir())[:4]:
            (root / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                shutil.copy(f, root / split / cls.name / f.name)
    return root


@pytest.mark.parametrize("method", sorted(METHOD_TEACHERS))
def test_method_dry_run_train_eval_export(method, labelled, tmp_path, capsys):
    over = [*tiny_overrides(labelled / "train", tmp_path / "runs", method), *method_overrides(method, tmp_path / "t"),
            "optim.max_steps=2", "optim.epochs=1"]
    assert main(["train", "--dry-run", *over]) == 0, capsys.readouterr().err
    # The run itself in-process (the CLI's `train` would start Ray even for num_workers=0: Ray Data streams).
    cfg = load_config(DEMO_CONFIG, over)
    table = scan_images(cfg.data.path)
    threads = torch.get_num_threads()
    train_loop(cfg, LocalContext(table, cfg.run_dir()), len(table))
    torch.set_num_threads(threads)
    run = cfg.run_dir()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(labelled), "--protocol", "knn", "--engine", "local",
                 "--k", "5"]) == 0, capsys.readouterr().err
    knn = json.loads((run / "eval" / "eval.json").read_text())["models"]
    (row,) = knn.values()
    assert set(row["knn"]) == {"5"} and 0 <= row["knn"]["5"] <= 100

    assert main(["export", "--checkpoint", str(run), "--onnx", "--projector"]) == 0, capsys.readouterr().err
    out = run / "export"
    info = json.loads((out / "export.json").read_text())
    assert info["method"] == method and info["steps"] == 2
    assert {"model.safetensors", "preprocessing.json", "MODEL_CARD.md", "model.onnx", "projector.safetensors"} <= {
        p.name for p in out.iterdir()}

    # Independently of export's own checks: the checkpoint's student, restored as trained, against the files.
    from rob_ray.export import load_exported_backbone

    cfg = Config.model_validate(load_state(info["checkpoint"])["config"])
    student = restore_student(cfg, load_state(info["checkpoint"])["student"])
    timm_model = load_exported_backbone(cfg.student.arch, out / "model.safetensors")
    x = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(1))  # timm's default input size
    with torch.no_grad():
        assert (timm_model(x) - student.embed(x)).abs().max().item() <= 1e-5

    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    pre = json.loads((out / "preprocessing.json").read_text())
    size = pre["input_size"][-1]
    x = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(2))  # another batch size than traced
    got = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - student.embed(x).numpy()).max() <= 1e-4
    card = (out / "MODEL_CARD.md").read_text()
    assert f"method {method}" in card and "licence" in card
