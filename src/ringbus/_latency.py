"""Rolling latency windows over the native Histogram: the ``latency_ms`` shape broker queues and patterns share.

Three stages (``queue_wait``, ``processing``, ``end_to_end``), each two windows of ``WINDOW`` seconds, so a
summary covers the last 30-60 s; windows that age out are folded into cumulative bucket counts (what a
Prometheus histogram shows). Pure bookkeeping: no broker, no Bus - patterns and the broker import it alike.
"""

from __future__ import annotations

from ringbus._core import Histogram

__all__ = ["Stage", "StageWindows", "STAGES", "WINDOW", "PROMETHEUS_BUCKETS", "SUMMARY_KEYS"]

WINDOW = 30.0  # seconds per window; latency_ms covers the last one to two windows
STAGES = ("queue_wait", "processing", "end_to_end")
SUMMARY_KEYS = ("count", "p50", "p90", "p99", "max")
# Upper bounds (seconds) of the buckets /metrics shows: Prometheus's defaults, widened to 100 us and 5 min.
PROMETHEUS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_BOUNDS_NS = tuple(int(b * 1e9) for b in PROMETHEUS_BUCKETS)


class Stage:
    """One stage's two windows and what older windows added up to."""

    __slots__ = ("recent", "previous", "folded", "folded_count", "folded_sum")

    def __init__(self) -> None:
        self.recent = Histogram()  # recording now
        self.previous = Histogram()  # the window before
        self.folded = [0] * len(_BOUNDS_NS)  # cumulative counts at PROMETHEUS_BUCKETS of aged-out windows
        self.folded_count = 0
        self.folded_sum = 0  # ns

    def fold(self, histogram: Histogram) -> None:
        if histogram.count:
            self.folded = [held + histogram.count_at_or_below(bound)
                           for held, bound in zip(self.folded, _BOUNDS_NS, strict=True)]
            self.folded_count += histogram.count
            self.folded_sum += histogram.sum
            histogram.reset()

    def summary(self) -> dict[str, float]:
        """count, p50, p90, p99 and max (ms) of both windows."""
        both = self.recent
        if self.previous.count:
            both = self.previous.copy()
            both.merge(self.recent)
        # ms to the microsecond: the buckets are ~3% wide anyway
        return {"count": both.count, "p50": round(both.percentile(50) / 1e6, 3),
                "p90": round(both.percentile(90) / 1e6, 3), "p99": round(both.percentile(99) / 1e6, 3),
                "max": round(both.max / 1e6, 3)}

    def cumulative(self) -> tuple[list[int], int, float]:
        """(counts <= each of PROMETHEUS_BUCKETS, count, sum in seconds) since the stage was made."""
        live = (self.previous, self.recent)
        counts = [held + sum(h.count_at_or_below(bound) for h in live)
                  for held, bound in zip(self.folded, _BOUNDS_NS, strict=True)]
        total_ns = self.folded_sum + sum(h.sum for h in live)
        return counts, self.folded_count + sum(h.count for h in live), total_ns / 1e9


class StageWindows:
    """The three stages and when their windows roll next (``now``: monotonic seconds).

    Subclasses keep the current windows' ``record_seconds`` bound for their hot path, rebinding them in
    :meth:`_bind`, which runs after every roll.
    """

    __slots__ = ("queue_wait", "processing", "end_to_end", "_roll_at")

    def __init__(self, now: float) -> None:
        self.queue_wait = Stage()
        self.processing = Stage()
        self.end_to_end = Stage()
        self._roll_at = now + WINDOW
        self._bind()

    def _bind(self) -> None:
        """Hook: the windows just changed."""

    def roll(self, now: float) -> None:
        """Start a new window if the current one is over (a window with nothing in it may pass unrolled)."""
        if now < self._roll_at:
            return
        stale = now >= self._roll_at + WINDOW  # nothing rolled for a whole window: the recent one is old too
        for stage in (self.queue_wait, self.processing, self.end_to_end):
            stage.fold(stage.previous)
            stage.previous, stage.recent = stage.recent, stage.previous
            if stale:
                stage.fold(stage.previous)
        self._roll_at = now + WINDOW
        self._bind()

    def latency_ms(self, now: float) -> dict[str, dict[str, float]]:
        """Per stage count, p50, p90, p99 and max in ms over the last 30-60 s (``QueueStats.latency_ms``)."""
        self.roll(now)
        return {"queue_wait": self.queue_wait.summary(), "processing": self.processing.summary(),
                "end_to_end": self.end_to_end.summary()}

    def cumulative(self, now: float) -> dict[str, tuple[list[int], int, float]]:
        """Per stage, cumulative bucket counts at PROMETHEUS_BUCKETS, count and sum (s): what /metrics shows."""
        self.roll(now)
        return {"queue_wait": self.queue_wait.cumulative(), "processing": self.processing.cumulative(),
                "end_to_end": self.end_to_end.cumulative()}
