"""Moved to `rob_ray.checks` (one checks package); this name stays importable for old callers."""

from rob_ray.checks.compat import *  # noqa: F403
from rob_ray.checks.compat import __all__  # noqa: F401
