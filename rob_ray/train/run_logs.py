"""Cut a run folder's logs back to the step a relaunch resumes from, so curves never fold back.

A run killed after step N but resumed from checkpoint step S < N would otherwise log steps
S+1..N twice: `metrics.jsonl` would read 1, 2, ..., N, S+1, ... and TensorBoard would draw a
curve that turns back on itself. On resume, rows and events after S are dropped (rank 0, before
the loop writes again).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

__all__ = ["trim_metrics_jsonl", "trim_run_logs", "trim_tensorboard"]


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def trim_metrics_jsonl(path: str | Path, step: int) -> int:
    """Keep rows with `step` <= `step` (and a cut-short last line goes too); returns rows dropped."""
    p = Path(path)
    if not p.is_file():
        return 0
    kept, dropped = [], 0
    for line in p.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # half a line from a killed writer
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int | float) and row["step"] > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        _replace(p, "".join(f"{line}\n" for line in kept).encode())
    return dropped


def _records(data: bytes):
    """TFRecord framing: uint64 length, uint32 CRC, payload, uint32 CRC. Yields (raw record, payload);
    stops at a record cut short."""
    i = 0
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        end = i + 12 + n + 4
        if end > len(data):
            return
        yield data[i:end], data[i + 12:i + 12 + n]
        i = end


def trim_tensorboard(folder: str | Path, step: int) -> int:
    """Drop events with a global step > `step` from every event file in `folder`; returns events dropped.

    Records are copied byte for byte (their CRCs stay valid); only the step is read from each.
    """
    d = Path(folder)
    if not d.is_dir():
        return 0
    try:
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:  # no tensorboardX: the writer wrote no events either
        return 0
    dropped = 0
    for f in sorted(d.glob("events.out.tfevents.*")):
        data, kept, n = f.read_bytes(), [], 0
        for raw, payload in _records(data):
            ev = Event()
            try:
                ev.ParseFromString(payload)
            except Exception:  # a damaged record: not drawable anyway
                n += 1
                continue
            if ev.step > step:
                n += 1
            else:
                kept.append(raw)
        if n or sum(map(len, kept)) != len(data):
            _replace(f, b"".join(kept))
        dropped += n
    return dropped


def trim_run_logs(run_dir: str | Path, step: int) -> str | None:
    """Trim `metrics.jsonl` and `tensorboard/` to `step`; a note for the console when anything went."""
    rows = trim_metrics_jsonl(Path(run_dir) / "metrics.jsonl", step)
    events = trim_tensorboard(Path(run_dir) / "tensorboard", step)
    if not rows and not events:
        return None
    return f"dropped {rows} metrics.jsonl row(s) and {events} TensorBoard event(s) logged after step {step}"
