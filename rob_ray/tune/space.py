"""Search spaces written in the config: dotted config paths -> distributions.

    tune:
      search_space:
        method.teacher_temp: {uniform: [0.03, 0.1]}
        student.head.hidden_dim: {choice: [1024, 2048]}
        optim.lr: {loguniform: [1.0e-4, 3.0e-3]}

Every key must be a real config field and every value the distribution can produce must pass
the same validation as a normal run — checked before any trial starts.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from rob_ray.config import Config, ConfigError, validate_config

__all__ = ["DISTRIBUTIONS", "check_space", "corner_configs", "resolve_trial_config", "to_tune_space"]

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")


def _parse(key: str, spec: Any) -> tuple[str, Any]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"config error: tune.search_space.{key} must be one of {{{' | '.join(DISTRIBUTIONS)}: ...}}, "
                          f"got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"config error: tune.search_space.{key}: unknown distribution '{kind}'; "
                          f"choose one of {', '.join(DISTRIBUTIONS)}")
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"config error: tune.search_space.{key}.{kind} needs a non-empty list of values")
        return kind, args
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, int | float) for a in args)):
        raise ConfigError(f"config error: tune.search_space.{key}.{kind} needs [low, high], got {args!r}")
    lo, hi = args
    if not lo < hi or (kind == "loguniform" and lo <= 0):
        raise ConfigError(f"config error: tune.search_space.{key}.{kind} = {args}: need "
                          f"{'0 < ' if kind == 'loguniform' else ''}low < high")
    return kind, (lo, hi)


def _candidates(kind: str, args: Any) -> list[Any]:
    """Values that bound what the distribution can produce (the corners for ranges)."""
    if kind in ("choice", "grid"):
        return list(args)
    lo, hi = args
    return [lo, hi - 1] if kind == "randint" else [lo, hi]


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return data


def resolve_trial_config(base: dict[str, Any], values: dict[str, Any]) -> Config:
    """The base config (as a dict) with the sampled dotted values set, validated like a normal run."""
    data = copy.deepcopy(base)
    for key, value in values.items():
        try:
            _set(data, key, value)
        except (AttributeError, TypeError):
            raise ConfigError(f"config error: '{key}' goes through a value, not a section") from None
    data.pop("tune", None)
    return validate_config(data)


def check_space(base: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, tuple[str, Any]]:
    """Parse the space and validate every corner combination against the config. Raises ConfigError."""
    parsed = {key: _parse(key, spec) for key, spec in space.items()}
    for key, (kind, args) in parsed.items():
        try:
            resolve_trial_config(base, {key: _candidates(kind, args)[0]})
        except ConfigError as exc:
            if "unknown key" in str(exc) or "is a value" in str(exc):
                raise ConfigError(f"config error: tune.search_space key '{key}': "
                                  f"{str(exc).removeprefix('config error: ')}") from None
    keys = list(parsed)
    for combo in itertools.product(*(_candidates(*parsed[k]) for k in keys)):
        values = dict(zip(keys, combo))
        try:
            resolve_trial_config(base, values)
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(f"{exc} (search_space allows {shown}; narrow the search space)") from None
    return parsed


def corner_configs(base: dict[str, Any], parsed: dict[str, tuple[str, Any]]):
    """Yield (values, Config) for every corner combination of a parsed space (already validated)."""
    keys = list(parsed)
    for combo in itertools.product(*(_candidates(*parsed[k]) for k in keys)):
        values = dict(zip(keys, combo))
        yield values, resolve_trial_config(base, values)


def to_tune_space(parsed: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """Ray Tune sampling objects for the parsed space (flat dict keyed by dotted path)."""
    from ray import tune

    make = {
        "loguniform": lambda a: tune.loguniform(*a),
        "uniform": lambda a: tune.uniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1]),
        "choice": lambda a: tune.choice(a),
        "grid": lambda a: tune.grid_search(a),
    }
    return {key: make[kind](args) for key, (kind, args) in parsed.items()}

