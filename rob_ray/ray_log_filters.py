"""Ray's own console lines that say nothing about a run: kept in Ray's log files, off the console.

- `DropKnownNoise`: a logging filter named by `rob_ray/ray_data_logging.yaml` (Ray Data's console
  handler in every worker);
- `quiet_ray_console()`: the driver side: Ray's token-auth notice, and known-harmless lines the
  driver echoes from workers (C++ `core_worker.cc … E` lines about Ray's *own* actors). Every line
  stays in the session's log files (`/tmp/ray/session_latest/logs`); `--verbose` keeps them on the
  console too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["CONSOLE_NOISE", "DropKnownNoise", "drop_noise", "quiet_ray_console"]

# Lines Ray Data prints once per worker that say nothing about this run (rob_ray turns the bars off on purpose).
NOISE = ("Progress bars disabled.",)

# Substrings of lines the driver would echo from Ray's processes, and why each is harmless here.
CONSOLE_NOISE = (
    # Printed as an *error* once per Ray-internal actor (Train's PreemptionWatcher, Data's map workers):
    # Ray warns that restarting such an actor could fail (ray-project/ray#53727); rob_ray's recovery
    # restarts the whole worker group from a checkpoint instead.
    "has constructor arguments in the object store and max_restarts > 0",
    # A local cluster started by `ray.init` turns token auth on and says so at every start.
    "Token authentication is enabled for this Ray cluster",
)


class DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.getMessage())
        return not (msg.startswith(NOISE) or any(n in msg for n in CONSOLE_NOISE))


def drop_noise(lines: Iterable[str]) -> list[str]:
    """`lines` without those that contain a `CONSOLE_NOISE` substring."""
    return [line for line in lines if not any(n in line for n in CONSOLE_NOISE)]


def _filtered(handler: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def handle(data: dict[str, Any]) -> None:
        lines = drop_noise(data.get("lines") or [])
        if lines:
            handler({**data, "lines": lines})

    handle.rob_ray_filtered = True  # type: ignore[attr-defined]
    return handle


def quiet_ray_console() -> None:
    """Install both driver-side filters (idempotent). Call before `ray.init` for the token notice;
    the worker-echo filter wraps Ray's console handler once `ray.init` has added it (call again after)."""
    noise = DropKnownNoise()
    for name in ("ray._private.authentication.authentication_token_setup", "ray"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownNoise) for f in logger.filters):
            logger.addFilter(noise)
    try:  # Ray's dispatcher of worker output on the driver (ray/_private/ray_logging): private, so optional
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    with dispatcher._lock:
        dispatcher.handlers = [(name, h if getattr(h, "rob_ray_filtered", False) else _filtered(h))
                               for name, h in dispatcher.handlers]
