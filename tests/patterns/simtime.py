"""Simulated time for the load-leveling and priority tests, fresh names, and the docs' samples.

``ManualClock``: time moves only when the test calls ``advance``; a thread in ``sleep`` waits (in real time)
until the test has moved the clock past its wake-up time. ``AutoClock``: ``sleep`` moves the clock at once,
for code that is alone with its clock. The backends (``url``) come from ``bus_fixtures``.
"""

from __future__ import annotations

import threading
import uuid

# A sleeper that nobody wakes for this long (real seconds) means the test lost its way: fail, do not hang.
STUCK = 30.0


class ManualClock:
    """A clock moved by the test; ``sleep`` blocks until ``advance`` has passed the sleeper's wake-up time."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._cond = threading.Condition()
        self._wakeups: dict[int, float] = {}
        self._closed = False

    def now(self) -> float:
        with self._cond:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._cond:
            if self._closed or seconds <= 0:
                return
            token = object()
            wake = self._now + seconds
            self._wakeups[id(token)] = wake
            try:
                while self._now < wake and not self._closed:
                    if not self._cond.wait(STUCK):
                        raise RuntimeError(f"ManualClock: asleep until {wake:.3f}, nobody moved time for {STUCK} s")
            finally:
                del self._wakeups[id(token)]

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def sleepers(self) -> int:
        """Threads asleep until a time that has not come yet (so: waiting for the test to move the clock)."""
        with self._cond:
            return sum(1 for wake in self._wakeups.values() if wake > self._now)

    def close(self) -> None:
        """Wake every sleeper and make later sleeps return at once (so that stopping never waits for time)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class AutoClock:
    """A clock that ``sleep`` moves forward at once (thread-safe); ``slept`` sums what was asked."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept = 0.0
        self.sleeps = 0

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)
            self.slept += seconds
            self.sleeps += 1


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def doc_sample(doc: str, marker: str) -> str:
    """The python block after ``<!-- marker -->`` in docs/patterns/<doc>: the docs' code must run as shown."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "patterns" / doc).read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"no sample {marker!r} in docs/patterns/{doc}"
    return found.group(1)
