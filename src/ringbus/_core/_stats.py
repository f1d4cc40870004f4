"""The statistics() snapshot that every ringbus queue returns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueStatistics:
    """A point-in-time view of a queue; fields may be stale as soon as read."""

    size: int
    capacity: int | None  # None: unbounded
    getters_waiting: int
    putters_waiting: int
    closed: bool
