"""What every pattern's ``stats()`` returns, and the thread-safe counter behind it."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ringbus._latency import StageWindows
from ringbus.message import Message

__all__ = ["PatternStats", "StatsCounter", "PatternLatency", "LATENCY_ENV"]

LATENCY_ENV = "RINGBUS_PATTERN_LATENCY"  # "0" / "off": patterns keep no latency histograms (a few % on no-op handlers)
_ON, _OFF = ("", "1", "true", "on", "yes"), ("0", "false", "off", "no")


@dataclass(frozen=True)
class PatternStats:
    """A snapshot of one pattern instance."""

    processed: int  # handled and acked
    failed: int  # handler raised (each failure counts, retried or not)
    retried: int  # failures sent back for another attempt
    dead_lettered: int  # given up on: to the dead-letter queue
    in_flight: int  # being handled now
    rate: float  # processed per second over the last few seconds
    # {"queue_wait" | "processing" | "end_to_end": {"count", "p50", "p90", "p99", "max"}} in ms over the last
    # 30-60 s, the shape of QueueStats.latency_ms; None where nothing measured them (see docs/observability.md).
    # Keyword-only, so the patterns' subclasses can still add fields without defaults.
    latency_ms: Mapping[str, Mapping[str, float]] | None = field(default=None, kw_only=True)


class PatternLatency(StageWindows):
    """Latencies of one pattern instance's handlers, filled by its :class:`~ringbus.patterns._handling.Dispatcher`
    objects from any number of threads; read as ``latency_ms``.

    - ``queue_wait``: from the send (``Message.timestamp``, the sender's wall clock) to the handler's start,
      first deliveries only (a redelivery's timestamp is still the first send);
    - ``processing``: from the handler's start to the ack, nack or dead letter (every handled delivery);
    - ``end_to_end``: from the send to the ack of a message its handler finished.

    A sample costs three native calls and no lock: with the C extension each ``record_seconds`` runs whole under
    the GIL. (The pure-Python twin, the fallback where the extension cannot build, may drop a count when two
    threads record at once.) Rolling the windows and reading them take the lock. The handler's start in
    wall-clock time is its monotonic start plus an offset taken again at each roll (every 30 s at most), which
    saves a clock read per message.
    """

    __slots__ = ("_lock", "_wall_offset", "_wait", "_processing", "_end_to_end")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        super().__init__(time.monotonic())

    def _bind(self) -> None:
        self._wall_offset = time.time() - time.monotonic()
        self._wait = self.queue_wait.recent.record_seconds
        self._processing = self.processing.recent.record_seconds
        self._end_to_end = self.end_to_end.recent.record_seconds

    def record(self, message: Message, started: float, settled: float, done: bool) -> None:
        """One handled delivery of ``message``: handler ``started`` and message ``settled`` (monotonic seconds);
        ``done``: handled and acked."""
        if settled >= self._roll_at:
            with self._lock:
                self.roll(settled)
        # Message.timestamp is the sender's wall clock: skew between hosts shifts it; a negative wait counts as 0.
        since_send = started + self._wall_offset - message.timestamp
        if since_send < 0.0:
            since_send = 0.0
        processing = settled - started
        if message.attempts == 0:  # a redelivery's timestamp is still its first send's
            self._wait(since_send)
        self._processing(processing)
        if done:
            self._end_to_end(since_send + processing)

    def summary(self) -> dict[str, dict[str, float]]:
        """``latency_ms`` now: per stage count, p50, p90, p99 and max in ms over the last 30-60 s."""
        with self._lock:
            return self.latency_ms(time.monotonic())


def _latency_default() -> bool:
    """Whether patterns keep latency histograms: yes, unless the environment's RINGBUS_PATTERN_LATENCY says no."""
    text = os.environ.get(LATENCY_ENV, "").strip().lower()
    if text not in _ON + _OFF:
        raise ValueError(f"{LATENCY_ENV}={text!r}: expected 1/true/on/yes or 0/false/off/no")
    return text in _ON


class StatsCounter:
    """Counts for :class:`PatternStats`, safe to update from many worker threads.

    ``latency``: keep the handlers' latency histograms (:class:`PatternLatency`) once a Dispatcher asks for
    them (:meth:`latency_recorder`); with False, ``latency_ms`` stays None. None: on, unless the environment
    variable ``RINGBUS_PATTERN_LATENCY`` is ``0`` (read when the counter is made).
    """

    def __init__(self, window: float = 5.0, *, latency: bool | None = None) -> None:
        self._lock = threading.Lock()
        self._window = window
        self.processed = self.failed = self.retried = self.dead_lettered = self.in_flight = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._latency_on = _latency_default() if latency is None else latency
        self._latency: PatternLatency | None = None

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def latency_recorder(self) -> PatternLatency | None:
        """The histograms this counter's Dispatchers fill (made at the first call), or None if latency is off."""
        if not self._latency_on:
            return None
        with self._lock:
            if self._latency is None:
                self._latency = PatternLatency()
            return self._latency

    def snapshot(self) -> PatternStats:
        latency = self._latency
        latency_ms = None if latency is None else latency.summary()
        with self._lock:
            now = time.monotonic()
            samples = self._samples
            samples.append((now, self.processed))
            while len(samples) > 2 and now - samples[1][0] >= self._window:
                samples.popleft()
            first_at, first = samples[0]
            rate = (self.processed - first) / (now - first_at) if now > first_at else 0.0
            return PatternStats(self.processed, self.failed, self.retried, self.dead_lettered, self.in_flight, rate,
                                latency_ms=latency_ms)
