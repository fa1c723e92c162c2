"""CI smoke test of experiments/bench_multi_student.py: three students in one run vs one after another at
tiny settings. Timings are not asserted; the weights are (each student equals its own run, bitwise on CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_bench_multi_student_smoke(tmp_path):
    out = tmp_path / "multi.json"
    proc = subprocess.run([sys.executable, "experiments/bench_multi_student.py", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert [s["student"] for s in r["students"]] == ["a", "b", "c"] and r["steps"] == 3
    assert r["bitwise_equal"] and all(s["final_loss_single"] == s["final_loss_multi"] for s in r["students"])
    assert r["multi_run_s"] > 0 and r["speedup"] == pytest.approx(r["one_after_another_s"] / r["multi_run_s"], rel=1e-2)
    assert all(0 < s["teacher_share"] < 1 for s in r["students"])
    assert "| a | test_resnet |" in proc.stdout and "weights bitwise equal: True" in proc.stdout
