"""Logging filters named by `rob_ray/ray_data_logging.yaml` (Ray Data's console handler in every worker)."""

from __future__ import annotations

import logging

__all__ = ["DropKnownNoise"]

# Lines Ray Data prints once per worker that say nothing about this run (rob_ray turns the bars off on purpose).
NOISE = ("Progress bars disabled.",)


class DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(NOISE)
