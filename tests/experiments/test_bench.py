"""CI smoke test of experiments/bench.py: tiny models on CPU, with Ray, pydantic and PyYAML made
unimportable (the lent GPU box has none of them), checking the JSON it writes."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

_BLOCKED_RUN = (
    "import sys, runpy; sys.modules.update(pydantic=None, ray=None, yaml=None); "
    "sys.argv = ['bench.py'] + sys.argv[1:]; runpy.run_path('experiments/bench.py', run_name='__main__')"
)


def test_bench_tiny_writes_the_table_without_ray_or_pydantic(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, "--tiny", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["row"].strip(): r for r in result["rows"]}
    for name in ("(a) rob_ray end to end from JPEG bytes", "(b) rob_ray step, synthetic on-device",
                 "(a2) rob_ray loop pipeline, decoded batches in",
                 "(c) naive step: eager fp32, synthetic", "augment: torchvision per image, 1 core",
                 "teacher alone (from its stage)", "student alone (fwd+bwd+opt stages)"):
        assert rows[name]["img_per_s"] > 0, name
        # img/s and ms/step are the same measurement two ways: batch / seconds.
        assert abs(rows[name]["img_per_s"] * rows[name]["ms_per_step"] / 1000 - (
            1 if name.startswith("augment: torchvision") else result["config"]["batch"])) < 1e-6 * rows[name]["img_per_s"] + 1e-9
    stages = [r["row"].strip() for r in result["rows"] if r["row"].strip().startswith("stage ")]
    for stage in ("decode", "augment", "teacher/forward", "student/forward_backward", "optimizer"):
        assert f"stage {stage}" in stages, stage
    c = result["checks"]
    assert c["loss_match"] and c["gflops_per_image"] > 0 and result["device"] == "cpu"
    assert c["pipeline_vs_step_alone"] > 0
    assert "| (a) rob_ray end to end from JPEG bytes |" in proc.stdout  # the printed table
