"""Process helpers for tests that start Ray themselves: wait on events (never on a wall-clock
budget) and stop only what the test started (never `ray stop --force`, which stops every Ray
cluster on the machine)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

# Only catches hangs: a slow, busy machine must never fail a test that is making progress.
HANG_TIMEOUT_S = 1800


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen | None = None,
               hang_timeout: float = HANG_TIMEOUT_S) -> None:
    """Poll `condition` until it holds. Raises if `proc` exits first (the event can no longer
    happen) or after `hang_timeout` seconds (a hang, not slowness)."""
    start = time.monotonic()
    while not condition():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited ({proc.returncode}) before the awaited event:\n{out[-4000:]}")
        if time.monotonic() - start > hang_timeout:
            raise AssertionError(f"no progress after {hang_timeout:.0f}s: hung")
        time.sleep(0.5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_session(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process group of `proc` (started with `start_new_session=True`), then wait
    until every process of that group is gone: the Ray processes a driver started die with it,
    and no other Ray on the machine is touched."""
    pgid = proc.pid
    if _group_alive(pgid):
        os.killpg(pgid, sig)
    proc.wait(timeout=120)
    wait_until(lambda: not _group_alive(pgid), hang_timeout=300)
