"""What a user sees around a run: the end-of-run summary, train.log, the pictures, a failed sweep."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from rob_ray.cli import main, run_summary
from rob_ray.config import load_config
from rob_ray.eval.plots import plot_knn_table, plot_training_curves, read_metrics
from rob_ray.run_log import write_train_log
from tests.conftest import DEMO_DATA, REPO

SMALL = [f"data.path={DEMO_DATA / 'train'}", "student.arch=test_resnet", "augment.global_size=32",
         "augment.local_size=16", "augment.num_local=2", "optim.batch_size=8", "scaling.num_workers=0",
         "run.compile_teacher=false"]


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_names_steps_images_speed_metrics_checkpoint_and_next_commands(tmp_path):
    cfg = load_config(None, [*SMALL, "data.eval_path=/data/labelled"])
    text = run_summary({"step": 20, "loss": 1.25, "online_knn_top1": 41.5, "skipped_images": 2},
                       {"total_steps": 20, "global_batch": 8}, 16.0, "/runs/x", Path("/runs/x/checkpoint_step_00000020"), cfg)
    lines = text.splitlines()
    assert lines[0] == "[rob_ray] training done: 20/20 steps, 160 images in 16s (10.0 img/s overall)"
    assert lines[1] == "[rob_ray] final: loss 1.25, online_knn_top1 41.5, skipped images 2"
    assert "checkpoint /runs/x/checkpoint_step_00000020" in lines[2]
    assert "python experiments/run.py eval --checkpoint /runs/x --data /data/labelled --protocol knn" in text
    assert "python experiments/run.py export --checkpoint /runs/x" in text


def test_train_log_records_config_versions_commit_machine_and_plan(tmp_path):
    cfg = load_config(None, SMALL)
    path = write_train_log(tmp_path / "run" / "train.log", cfg.model_dump(mode="json"), {"total_cpus": 2.0}, REPO)
    write_train_log(path, cfg.model_dump(mode="json"), {"total_cpus": 3.0}, REPO)  # a relaunch appends
    sections = [s for s in path.read_text().split("=== launch ") if s.strip()]
    assert len(sections) == 2
    body = yaml.safe_load(sections[0].split("\n", 1)[1])
    assert body["config"]["student"]["arch"] == "test_resnet" and body["resource_plan"] == {"total_cpus": 2.0}
    assert body["packages"]["torch"] and body["packages"]["ray"] and body["machine"]["cpus"] >= 1
    assert body["git_commit"]  # a sha here, or says it is not a checkout


def test_training_curves_and_knn_bars_are_pngs(tmp_path):
    rows = [{"step": s, "loss": 3.0 - 0.1 * s, "img_per_s": 40.0, "data_wait_frac": 0.1, "teacher_entropy": 2.0,
             "student_entropy": 3.0 - 0.05 * s, **({"online_knn_top1": 20.0 + s} if s % 5 == 0 else {})}
            for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_training_curves(read_metrics(tmp_path), tmp_path / "training_curves.png") is not None
    assert _png(tmp_path / "training_curves.png")
    report = {"k": 20, "rows": [{"model": "student (RoB-trained)", "knn_top1": 58.0, "dim": 512},
                                {"model": "student (untrained)", "knn_top1": 30.3, "dim": 512}]}
    assert _png(plot_knn_table(report, tmp_path / "knn.png"))


def _fake_result(trial: str, error: BaseException | None):
    return SimpleNamespace(error=error, metrics=None, config={"optim.lr": 1e-3}, metrics_dataframe=None,
                           path=f"/sweep/tuner/{trial}")


def test_sweep_where_every_trial_failed_exits_1_with_each_reason(tmp_path, monkeypatch, capsys):
    import rob_ray.tune.sweep as sweep

    cfg = load_config(None, [*SMALL, "tune.metric=loss", "tune.mode=min", f"run.storage_path={tmp_path}",
                             "tune.search_space={optim.lr: {loguniform: [1.0e-4, 1.0e-3]}}"])
    try:
        raise RuntimeError("Training failed") from ValueError("CUDA out of memory on worker 0\nmore detail")
    except RuntimeError as exc:
        wrapped = exc
    results = [_fake_result("trial_a", wrapped), _fake_result("trial_b", OSError("disk full"))]
    out = sweep.write_outputs(cfg, cfg.model_dump(mode="json"), results, tmp_path, num_images=1000)
    assert out["failed"] == [{"trial_id": "trial_a", "reason": "ValueError: CUDA out of memory on worker 0"},
                             {"trial_id": "trial_b", "reason": "OSError: disk full"}]
    monkeypatch.setattr(sweep, "run_sweep", lambda c: out)
    rc = main(["tune", *SMALL, "tune.metric=loss", "tune.mode=min", f"run.storage_path={tmp_path}",
               "tune.search_space={optim.lr: {loguniform: [1.0e-4, 1.0e-3]}}"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1
    assert err == [f"[rob_ray] sweep failed: all 2 trial(s) failed ({tmp_path})",
                   "  trial trial_a: ValueError: CUDA out of memory on worker 0", "  trial trial_b: OSError: disk full"]


def test_no_colour_codes_when_stdout_is_not_a_terminal(monkeypatch):
    import os

    from rob_ray.cli import _quiet_console

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    _quiet_console()  # pytest's captured stdout is not a terminal
    assert os.environ["RAY_COLOR_PREFIX"] == "0"


def test_a_ray_address_file_of_a_killed_cluster_is_noticed(tmp_path, monkeypatch):
    import socket

    import ray._common.utils as ray_utils

    from rob_ray.train.launch import _stale_cluster_file

    address_file = tmp_path / "ray_current_cluster"
    monkeypatch.setattr(ray_utils, "get_ray_address_file", lambda temp_dir: str(address_file))
    assert _stale_cluster_file() is None  # no file: Ray's own lookup decides
    with socket.socket() as live:
        live.bind(("127.0.0.1", 0))
        live.listen()
        port = live.getsockname()[1]
        address_file.write_text(f"127.0.0.1:{port}")
        assert _stale_cluster_file() is None  # something answers: join it
    assert _stale_cluster_file() == f"127.0.0.1:{port}"  # closed now: nothing answers

    from rob_ray.train.launch import _remove_stale_cluster_file

    _remove_stale_cluster_file("127.0.0.1:1")  # names another cluster now: left alone
    assert address_file.exists()
    _remove_stale_cluster_file(f"127.0.0.1:{port}")  # Ray Train's own actors would read it: gone
    assert not address_file.exists()


def test_ray_internal_notices_stay_off_the_console(caplog):
    import logging

    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from rob_ray.ray_log_filters import quiet_ray_console

    seen: list[list[str]] = []
    dispatcher.add_handler("rob_ray_test", lambda data: seen.append(data["lines"]))
    try:
        quiet_ray_console()
        quiet_ray_console()  # idempotent: one wrapper, not two
        ours = "[rob_ray] epoch 0 step 15/300 loss 6.2"
        harmless = ("[2026-11-28 21:45:38,774 E 9404 9443] core_worker.cc:2465: Actor with class name: "
                    "'PreemptionWatcher' and ID: 'f4' has constructor arguments in the object store and "
                    "max_restarts > 0. If the arguments ...")
        real_error = "[2026-11-28 21:45:38,774 E 9404 9443] core_worker.cc:99: something actually broke"
        dispatcher.emit({"lines": [harmless, ours, real_error], "pid": 1, "is_err": True})
        dispatcher.emit({"lines": [harmless], "pid": 1, "is_err": True})  # nothing left: nothing printed
        assert seen == [[ours, real_error]]
    finally:
        dispatcher.remove_handler("rob_ray_test")
    token = logging.getLogger("ray._private.authentication.authentication_token_setup")
    with caplog.at_level(logging.WARNING):
        token.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ...")
        token.warning("Token authentication is disabled for this Ray cluster.")  # a real security notice stays
    assert [r.getMessage() for r in caplog.records] == ["Token authentication is disabled for this Ray cluster."]
