"""Waiting on the event loop for something a thread-safe structure may hold: try without blocking, then sleep.

The core types (Ring, PriorityQueue) and the memory:// books wait on native condition variables; a thread
parked on one cannot give an item back when the task that wanted it is cancelled. So asyncio code never
blocks on them: it takes with ``*_nowait`` and, when there is nothing, sleeps - briefly at first, longer
(up to ``POLL_MAX``) while nothing comes. A :class:`Doorbell` cuts the sleep short when another asyncio
user of the same structure, in any loop of the process, put something in (or took something out).
Cancellation is safe by construction: the only ``await`` is the sleep, and nothing is held across it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ringbus.errors import Empty

__all__ = ["Doorbell", "POLL_MAX", "poll"]

T = TypeVar("T")

# Sleeps between tries: short while something is likely to come soon, then POLL_MAX. asyncio rounds
# selector timeouts up to a millisecond, so the first steps are mostly a yield to other tasks.
POLL_STEPS = (0.0, 0.0, 0.0005, 0.001, 0.002)
POLL_MAX = 0.005


class Doorbell:
    """Wakes the asyncio tasks sleeping in :func:`poll` on one structure (from any thread or loop)."""

    __slots__ = ("_waiters", "_lock")

    def __init__(self) -> None:
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._lock = threading.Lock()

    def ring(self) -> None:
        """Wake every sleeper now."""
        if not self._waiters:
            return
        with self._lock:
            waiters, self._waiters = self._waiters, set()
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, future in waiters:
            if loop is running:
                _wake(future)
            else:
                try:
                    loop.call_soon_threadsafe(_wake, future)
                except RuntimeError:  # that loop is closed
                    pass

    async def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, less if :meth:`ring` is called meanwhile."""
        if seconds <= 0.0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entry = (loop, future)
        with self._lock:
            self._waiters.add(entry)
        handle = loop.call_later(seconds, _wake, future)
        try:
            await future
        finally:
            handle.cancel()
            with self._lock:
                self._waiters.discard(entry)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def poll(attempt: Callable[[], T], timeout: float | None, doorbell: Doorbell | None,
               missing: type[Exception] = Empty) -> T:
    """``attempt()`` until it stops raising ``missing`` (``Empty``, or ``Full`` for a put); after ``timeout``
    seconds re-raise it.

    ``timeout`` None tries for ever (until cancelled); 0 tries once.
    """
    try:
        return attempt()
    except missing:
        if timeout is not None and timeout <= 0.0:
            raise
    deadline = None if timeout is None else time.monotonic() + timeout
    step = 0
    while True:
        pause = POLL_STEPS[step] if step < len(POLL_STEPS) else POLL_MAX
        step += 1
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0.0:
                return attempt()  # one last try: it raises ``missing`` if there is still nothing
            pause = min(pause, left)
        if doorbell is None:
            await asyncio.sleep(pause)
        else:
            await doorbell.sleep(pause)
        try:
            return attempt()
        except missing:
            pass

