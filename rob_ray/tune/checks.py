"""Everything about a sweep that can be checked before Ray starts (`tune --dry-run` runs exactly this).

The base config goes through the same preflight as `train` (data listed, teacher and student
built, compatibility); every corner of the search space through the config validation and the
model-free input checks, with each model name it can produce looked up in timm; the metric must
be one the trials will report.
"""

from __future__ import annotations

from typing import Any

from rob_ray.config import Config, ConfigError, EvalConfig, TuneConfig, config_to_dict
from rob_ray.tune.space import check_space, corner_configs

__all__ = ["check_metric", "check_sweep"]

def check_metric(tune_cfg: TuneConfig, eval_cfg: EvalConfig) -> None:
    """The default metric (online k-NN top-1) exists only when online k-NN runs."""
    if tune_cfg.metric.startswith("online_knn") and not eval_cfg.online_knn_every_epochs:
        raise ConfigError(
            f"config error: tune.metric = '{tune_cfg.metric}' is reported only with online k-NN on; set "
            "eval.online_knn_every_epochs=1 and eval.online_knn_path (a labelled train/ + val/ folder), or "
            "tune.metric=loss tune.mode=min")
    if tune_cfg.metric == "online_linear_top1" and not (eval_cfg.online_knn_every_epochs and eval_cfg.online_linear):
        raise ConfigError(
            "config error: tune.metric = 'online_linear_top1' is reported only with the online linear probe on; set "
            "eval.online_linear=true, eval.online_knn_every_epochs=1 and eval.online_knn_path, or "
            "tune.metric=online_knn_top1")
    if tune_cfg.metric == "loss" and tune_cfg.mode == "max":
        raise ConfigError("config error: tune.metric = 'loss' with tune.mode = 'max' would pick the worst trial; "
                          "set tune.mode=min")


def _model_names(cfg: Config) -> None:
    """timm names a corner can produce (student.arch; a timm teacher's arch) must exist."""
    import timm

    for key, name in (("student.arch", cfg.student.arch),
                      ("teacher.arch", cfg.teacher.arch if cfg.teacher.kind in ("timm", "state_dict") else None)):
        if name and not timm.is_model(name.split(".")[0]):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
            raise ConfigError(f"config error: {key} '{name}' is not a timm model (similar: {', '.join(close) or 'none'})")


def check_sweep(cfg: Config) -> dict[str, tuple[str, Any]]:
    """Validate the whole sweep; returns the parsed space. Raises the CLI's one-line user errors."""
    from rob_ray.checks.inputs import check_inputs
    from rob_ray.checks.preflight import preflight

    if not cfg.tune.search_space:
        raise ConfigError("config error: tune.search_space is empty; add e.g. optim.lr: {loguniform: [1.0e-4, 3.0e-3]}")
    check_metric(cfg.tune, cfg.eval)
    base = config_to_dict(cfg)
    parsed = check_space(base, cfg.tune.search_space)  # keys, distributions, validation of every corner
    for values, corner in corner_configs(base, parsed):
        try:
            check_metric(cfg.tune, corner.eval)
            check_inputs(corner)
            _model_names(corner)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(f"{exc} (search_space allows {shown}; narrow the search space)") from None
    pre_cfg = cfg.model_copy(deep=True)
    preflight(pre_cfg)  # the base: data listed, teacher + student built and compatible
    return parsed
