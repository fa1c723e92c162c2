"""`experiments/run.py eval` on a tiny run: the JSON, markdown table and PNGs it writes."""

from __future__ import annotations

import json
import struct

import pytest


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_eval_cli_writes_json_table_and_plots(tiny_run, labelled_root, capsys):
    from rob_ray.cli import main  # experiments/run.py calls exactly this

    rc = main(["eval", "--checkpoint", str(tiny_run), "--data", str(labelled_root), "--engine", "local",
               "--models", "student,untrained", "--protocol", "knn,linear,lowshot", "--linear-epochs", "3",
               "--draws", "2", "--k", "5,20"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-2000:]
    out = tiny_run / "eval"
    res = json.loads((out / "eval.json").read_text())
    assert res["size"] == 32 and res["classes"] == sorted(p.name for p in (labelled_root / "train").iterdir())
    assert list(res["models"]) == ["student test_resnet (trained)", "student test_resnet (untrained)"]
    for r in res["models"].values():
        assert r["train_images"] == 40 and r["test_images"] == 20 and r["dim"] > 0
        assert set(r["knn"]) == {"5", "20"} and all(0 <= v <= 100 for v in r["knn"].values())
        assert 0 <= r["linear"]["test_top1"] <= 100 and len(r["linear"]["grid"]) == 9
        assert set(r["lowshot"]) == {"1-shot", "2-shot", "5-shot", "1%"}
        assert all(len(v["runs"]) == 2 for v in r["lowshot"].values())
    table = (out / "eval.md").read_text().splitlines()
    assert table[2].startswith("| model | dim | k-NN k=5 | k-NN k=20 | linear (val) | linear (test) | 1-shot")
    trained = res["models"]["student test_resnet (trained)"]
    assert table[4].startswith(f"| student test_resnet (trained) | {trained['dim']} | {trained['knn']['5']:.1f} |")
    for name in ("training_curves", "online_knn", "lowshot", "accuracy"):
        w, h = _png_size(out / f"{name}.png")
        assert w >= 200 and h >= 150, (name, w, h)
    assert "| student test_resnet (untrained) |" in printed.out


def test_eval_cli_user_errors_exit_2(tiny_run, labelled_root, capsys):
    from rob_ray.cli import main

    assert main(["eval", "--checkpoint", str(tiny_run), "--data", str(labelled_root / "train"), "--engine", "local"]) == 2
    assert "must be a labelled ImageFolder with train/ and val/" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_run), "--data", str(labelled_root), "--protocol", "knn,svm"]) == 2
    assert "protocol 'svm' is unknown" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_run / "nope"), "--data", str(labelled_root)]) == 2
    assert "is not a run folder with checkpoints" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_run), "--data", str(labelled_root), "--k", "10,twenty"]) == 2
    assert "--k '10,twenty' must be a comma list of integers" in capsys.readouterr().err


def test_eval_cli_keeps_the_traceback_of_a_bug(tiny_run, labelled_root, monkeypatch):
    """A ValueError that is not about the user's input (here: from inside evaluate) is not exit code 2."""
    from rob_ray.cli import main
    from rob_ray.eval import runner

    def broken(*args, **kwargs):
        raise ValueError("shape mismatch deep inside")

    monkeypatch.setattr(runner, "evaluate", broken)
    with pytest.raises(ValueError, match="shape mismatch deep inside"):
        main(["eval", "--checkpoint", str(tiny_run), "--data", str(labelled_root), "--engine", "local"])
