"""Moved to `rob_ray.checks` (one checks package); this name stays importable for old callers and merges."""

from rob_ray.checks.preflight import *  # noqa: F403
from rob_ray.checks.preflight import __all__  # noqa: F401
