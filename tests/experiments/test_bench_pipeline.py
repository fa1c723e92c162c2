"""CI smoke test of experiments/bench_pipeline.py: the comparison table (rob_ray through Ray Data +
Ray Train, the hand-written plain-PyTorch loop, rob_ray's step alone) at tiny settings. Timings are
not asserted: only that every row is measured and the ratios are what the table says."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, can_compile
from tests.processes import HANG_TIMEOUT_S

sys.path.insert(0, str(REPO / "experiments"))
import bench_pipeline

from rob_ray.train.launch import WORKER_CPU_ENV


def test_in_process_env_is_the_workers_or_libgomps_default_wait():
    user = {"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE", "MALLOC_TOP_PAD_": "1"}
    worker = bench_pipeline.in_process_env(user, "worker")
    assert worker == {"PATH": "/bin", **WORKER_CPU_ENV} and worker["OMP_WAIT_POLICY"] == "PASSIVE"
    default = bench_pipeline.in_process_env(user, "default")
    # The glibc settings stay (rob_ray's and the plain loop's allocator are the same); the wait policy is unset.
    assert "OMP_WAIT_POLICY" not in default and default["MALLOC_TOP_PAD_"] == WORKER_CPU_ENV["MALLOC_TOP_PAD_"]
    assert "GOMP_SPINCOUNT" not in bench_pipeline.in_process_env({**user, "GOMP_SPINCOUNT": "5"}, "default")
    assert user["OMP_WAIT_POLICY"] == "ACTIVE"  # the caller's dict is not changed
    assert bench_pipeline.in_process_env(default, "default") == default  # no second re-exec


def test_no_overhead_rate_shares_the_cores_between_the_step_and_the_actors():
    ideal = bench_pipeline.no_overhead_rate
    # 2 cores, a 2-thread step at 144.6 img/s (13.83 core-ms per image) and actors at 1.339 core-ms per image:
    # 2 cores / 15.17 core-ms = 131.8 img/s, below the step alone.
    assert ideal(144.6, 2, 2, 1.339) == pytest.approx(2 / (2 / 144.6 + 1.339e-3))
    assert ideal(144.6, 2, 2, 1.339) == pytest.approx(131.84, abs=0.01)
    assert ideal(144.6, 2, 2, 0.0) == pytest.approx(144.6)  # free decoding: the step itself
    # Crops in the worker: in series with the step (1 / (1/100 + 1/1000) = 90.9 img/s), then the cores:
    # 2 x 11 ms + 0.5 ms = 22.5 core-ms per image -> 88.9 img/s.
    assert ideal(100.0, 2, 2, 0.5, worker_crops_img_per_s=1000.0) == pytest.approx(2 / 0.0225)
    # A 16-core node with a 15-thread step: the spare core covers cheap actors, and the step caps the rate.
    assert ideal(1000.0, 15, 16, 0.5) == pytest.approx(1000.0)
    assert ideal(1000.0, 15, 16, 2.0) == pytest.approx(16 / 0.017)


@pytest.mark.ray
def test_bench_pipeline_smoke_prints_the_comparison(tmp_path):
    out = tmp_path / "pipeline.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, "experiments/bench_pipeline.py", "--smoke", "--out", str(out),
                           "--variant", "run.compile_teacher=false"], cwd=REPO,
                          capture_output=True, text=True, timeout=HANG_TIMEOUT_S, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["row"]: r for r in result["rows"]}
    e2e = rows["rob_ray end to end (Ray Data + Ray Train, its metrics)"]
    plain = rows["plain PyTorch loop, end to end (hand-written)"]
    step = rows["rob_ray step alone (TrainStep, ready-made views)"]
    assert all(r["img_per_s"] > 0 for r in rows.values())
    assert e2e["timed_steps"] >= 2 and e2e["steps"] > e2e["timed_steps"]  # the "after warm-up" rate's windows
    # The headline rate spans every step (the actors decode ahead, in the first windows), less the actors' start
    whole_s = sum(e2e["window_s"]) - e2e["start_wait_s"]
    assert e2e["img_per_s"] == pytest.approx(e2e["steps"] * result["batch"] / whole_s)
    assert 0 <= e2e["start_wait_s"] < e2e["window_s"][0]
    c = result["checks"]
    assert c["e2e_vs_plain_loop"] == pytest.approx(e2e["img_per_s"] / plain["img_per_s"])
    assert c["e2e_vs_step_alone"] == pytest.approx(e2e["img_per_s"] / step["img_per_s"])
    # The no-overhead rate, from the same run's step and actor rates (the default placement on a CPU:
    # the actors crop, at the "one data actor" row's rate).
    actor = rows["one data actor, crops_on=data_actors: decode + batched crops"]
    ideal = rows["no-overhead rate: the step's and the data actors' CPU time on every core"]
    assert ideal["img_per_s"] == pytest.approx(bench_pipeline.no_overhead_rate(
        step["img_per_s"], result["torch_threads"], result["cpu_cores"], 1000 / actor["img_per_s"]))
    assert c["e2e_vs_no_overhead"] == pytest.approx(e2e["img_per_s"] / ideal["img_per_s"])
    assert c["no_overhead_vs_plain_loop"] == pytest.approx(ideal["img_per_s"] / plain["img_per_s"])
    assert c["no_overhead_vs_step_alone"] == pytest.approx(ideal["img_per_s"] / step["img_per_s"])
    assert c["no_overhead_vs_step_alone"] <= 1.0 + 1e-9
    # The step's FLOP rate, against a matrix product on the same threads
    assert result["step_gflop_per_image"] > 0 and result["matmul_gflop_per_s"] > 0
    assert result["step_gflop_per_s"] == pytest.approx(step["img_per_s"] * result["step_gflop_per_image"])
    assert "GFLOP/s at the step-alone rate" in proc.stdout
    # The step's stages, timed alike in a plain process and in the worker (its metrics, timed windows only)
    stages = result["stage_ms_per_step"]
    for where in ("step_alone", "rob_ray_worker"):
        assert all(stages[where][k] > 0 for k in ("teacher/forward", "student/forward_backward", "optimizer", "step"))
    assert stages["step_alone"]["step"] == pytest.approx(1000 * result["batch"] / step["img_per_s"])
    parts = sum(stages["rob_ray_worker"][k] for k in ("teacher/forward", "student/forward_backward", "optimizer"))
    assert parts <= stages["rob_ray_worker"]["step"] * 1.001  # the stages lie inside the worker's step
    assert "| stage, ms per step | step alone |" in proc.stdout
    assert "| rob_ray end to end (Ray Data + Ray Train, its metrics) |" in proc.stdout
    # The step alone runs the teacher as the worker does: compiled frozen on CPU where torch can compile,
    # timed against the eager teacher in the same run; the variant reruns (1) with the eager teacher.
    assert result["teacher_run"] == ("frozen" if can_compile() else "eager")
    eager_step = rows.get("rob_ray step alone, eager teacher (run.compile_teacher=false)")
    assert (eager_step is not None) == (result["teacher_run"] == "frozen")
    if eager_step is not None:
        assert c["step_alone_vs_eager_teacher_step"] == pytest.approx(step["img_per_s"] / eager_step["img_per_s"])
    variant = rows["rob_ray end to end, run.compile_teacher=false"]
    assert variant["overrides"] == "run.compile_teacher=false" and variant["timed_steps"] == e2e["timed_steps"]
    assert c["e2e_vs_variant[run.compile_teacher=false]"] == pytest.approx(e2e["img_per_s"] / variant["img_per_s"])
    # `auto` on a CPU: fp32, as the worker resolves it; the CPU's native bf16 is recorded beside it
    from rob_ray.precision import cpu_computes_bf16

    assert result["precision"] == "fp32" and result["cpu_native_bf16"] is cpu_computes_bf16()
    fp32 = rows.get("plain PyTorch loop in fp32 (a script's default), end to end")
    assert (fp32 is not None) == (result["precision"] == "bf16")
    if fp32 is not None:
        assert c["e2e_vs_fp32_plain_loop"] == pytest.approx(e2e["img_per_s"] / fp32["img_per_s"])


@pytest.mark.parametrize("bf16", [False, True])
def test_plain_loop_computes_in_the_precision_it_is_given(small_folder, tmp_path, bf16):
    """`run.precision=bf16` puts both in-process rows in bf16 autocast: the hand-written loop's forward
    passes run under it (or not), and its step still learns (finite loss, weights move)."""
    import torch

    from rob_ray.config import load_config
    from rob_ray.data import scan_images
    from rob_ray.methods import build_models
    from tests.conftest import tiny_overrides

    cfg = load_config(None, [*tiny_overrides(small_folder, tmp_path), "teacher.kind=efficientnet_lite0"])
    teacher, student = build_models(cfg)
    table = scan_images(small_folder)
    plain = bench_pipeline.PlainLoop([table.paths[i] for i in range(len(table))], teacher, student, batch=4,
                                     n_global=2, n_local=2, g_size=32, l_size=16, g_scale=(0.4, 1.0),
                                     l_scale=(0.05, 0.4), lr=1e-3, weight_decay=0.0, t_temp=1.0, s_temp=0.1,
                                     clip=3.0, bf16=bf16)
    seen = []
    first = next(m for m in student.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = first.weight.detach().clone()
    images = plain.load(0)  # the shipped photos differ in size: load() resizes them to the first one's
    loss = plain.step(plain.crops(images))
    assert images.dtype == torch.uint8 and images.shape[0] == 4
    assert seen and set(seen) == {torch.bfloat16 if bf16 else torch.float32}
    assert torch.isfinite(torch.tensor(loss)) and not torch.equal(before, first.weight)

