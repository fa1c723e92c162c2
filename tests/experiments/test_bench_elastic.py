"""CI smoke test of experiments/bench_elastic.py (gloo backend, no Ray): every row is measured, the
runs reach the last step, the preemption checkpoint is at the notice step and the resumed run is
bitwise equal to the uninterrupted one."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_bench_elastic_smoke(tmp_path):
    out = tmp_path / "elastic.json"
    proc = subprocess.run([sys.executable, "experiments/bench_elastic.py", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["run"]: r for r in result["rows"]}
    assert len(rows) == 3 and all(r["final_step"] == 4 for r in rows.values())
    assert all(r["within_tol"] for r in rows.values()), rows
    assert rows["2 workers, preemption notice at step 2"]["max_abs_weight_diff"] == 0.0
    assert result["preemption_checkpoints_after_notice"] == [2]
    assert sorted(result["loss_curves"]["lost"]) == ["1", "2", "3", "4"]
    assert "| 2 workers, 1 from step 2 | 1 worker |" in proc.stdout
