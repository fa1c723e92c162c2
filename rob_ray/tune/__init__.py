"""Hyper-parameter sweeps: search spaces in the config (space, plain Python), outputs (plain
Python), and the Ray Tune runner (sweep, imports Ray — import it explicitly)."""

from rob_ray.tune.outputs import best_trial, write_best_config, write_sweep_plot, write_trials_csv
from rob_ray.tune.space import DISTRIBUTIONS, check_space, resolve_trial_config

__all__ = ["DISTRIBUTIONS", "best_trial", "check_space", "resolve_trial_config", "write_best_config",
           "write_sweep_plot", "write_trials_csv"]
