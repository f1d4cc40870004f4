"""What every pattern's ``stats()`` returns, and the thread-safe counter behind it."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["PatternStats", "StatsCounter"]


@dataclass(frozen=True)
class PatternStats:
    """A snapshot of one pattern instance."""

    processed: int  # handled and acked
    failed: int  # handler raised (each failure counts, retried or not)
    retried: int  # failures sent back for another attempt
    dead_lettered: int  # given up on: to the dead-letter queue
    in_flight: int  # being handled now
    rate: float  # processed per second over the last few seconds


class StatsCounter:
    """Counts for :class:`PatternStats`, safe to update from many worker threads."""

    def __init__(self, window: float = 5.0) -> None:
        self._lock = threading.Lock()
        self._window = window
        self.processed = self.failed = self.retried = self.dead_lettered = self.in_flight = 0
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> PatternStats:
        with self._lock:
            now = time.monotonic()
            samples = self._samples
            samples.append((now, self.processed))
            while len(samples) > 2 and now - samples[1][0] >= self._window:
                samples.popleft()
            first_at, first = samples[0]
            rate = (self.processed - first) / (now - first_at) if now > first_at else 0.0
            return PatternStats(self.processed, self.failed, self.retried, self.dead_lettered, self.in_flight, rate)
