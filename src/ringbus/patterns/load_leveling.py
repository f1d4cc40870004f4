"""Queue-based load leveling: a queue absorbs bursts; a consumer drains it no faster than a rate, no wider than N.

The service behind the consumer (a mail API with a quota, a database, a
payment provider) sees a steady load however the producers burst:

- :class:`TokenBucket` - ``rate`` tokens per second, at most ``burst`` saved up; each message takes one.
- :class:`LevelledConsumer` - one thread takes messages from the queue (``prefetch`` at a time), waits for a
  free handler slot and then for a token, and hands the message to one of ``concurrency`` handler threads,
  which ack it (or nack it with backoff; dead-letter it with the error once it has used its attempts).
- :class:`LevelledProducer` - a send that waits and tries again while the queue is full, so that memory stays
  bounded end to end: the queue holds at most ``max_length`` messages, the consumer at most ``prefetch`` more,
  and a producer that outruns both is slowed down instead of growing a backlog of its own.

Clock and sleep are injectable, so tests (and capacity planning) can run hours of traffic in simulated time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ringbus._core import Ring
from ringbus.bus import Bus, check_name, check_seconds, connect
from ringbus.errors import Closed, Empty, Full, RingbusError
from ringbus.message import Message
from ringbus.patterns._handling import Dispatcher
from ringbus.patterns._lifecycle import BackgroundConsumer, check_count, check_positive
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = ["TokenBucket", "LevelledConsumer", "LevelledStats", "LevelledProducer"]

log = logging.getLogger("ringbus.load_leveling")

Clock = Callable[[], float]
Sleep = Callable[[float], None]

POLL = 0.25  # seconds (real time) a wait lasts before the consumer looks at stop() again
RATE_WINDOW = 5.0  # seconds (of the consumer's clock) over which stats().rate counts handler starts
_EPSILON = 1e-9  # tokens lost to floating point rounding are not worth a sleep


class TokenBucket:
    """A token bucket: ``rate`` tokens per second accrue, up to ``burst``; work takes tokens before it starts.

    Thread-safe. It starts full, so the first ``burst`` acquisitions do not wait. Over any stretch of time
    ``T`` it grants at most ``burst + rate * T`` tokens.

    Parameters
    ----------
    rate : float
        Tokens per second (> 0).
    burst : float or None
        Most tokens saved up while idle (>= 1); None for ``max(1, rate / 10)``: a tenth of a second's worth,
        so the service never sees more than that at once.
    clock : callable
        Returns seconds (monotonic); ``time.monotonic`` by default.
    sleep : callable
        Sleeps that many seconds of ``clock``; ``time.sleep`` by default.
    """

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic,
                 sleep: Sleep = time.sleep) -> None:
        self.rate = check_positive("rate", rate)
        burst = max(1.0, self.rate / 10.0) if burst is None else check_positive("burst", burst)
        if burst < 1.0:
            raise ValueError(f"burst must be >= 1 (a bucket that cannot hold one token never grants one), "
                             f"got {burst!r}")
        self.burst: float = burst
        if not callable(clock) or not callable(sleep):
            raise TypeError("clock and sleep must be callables, like time.monotonic and time.sleep")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = burst
        self._last = clock()

    def _refill(self) -> float:
        now = self._clock()
        elapsed = now - self._last
        if elapsed > 0.0:  # a clock that went back adds nothing
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._last = now
        return now

    def _check(self, tokens: float) -> float:
        need = check_positive("tokens", tokens)
        if need > self.burst:
            raise ValueError(f"tokens must be <= burst ({self.burst:g}): a bucket never holds {tokens!r} at once")
        return need

    def try_acquire(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if the bucket holds them now; never waits."""
        need = self._check(tokens)
        with self._lock:
            self._refill()
            if self._tokens >= need - _EPSILON:
                self._tokens -= need
                return True
            return False

    def acquire(self, tokens: float = 1.0, timeout: float | None = None,
                cancel: threading.Event | None = None) -> bool:
        """Take ``tokens``, sleeping until they have accrued; False if that takes longer than ``timeout``.

        ``timeout`` is in seconds of the bucket's clock; None waits as long as it takes (at most
        ``tokens / rate`` seconds when no other thread competes). ``cancel``, an Event, ends the wait with
        False once it is set (looked at after each sleep).
        """
        need = self._check(tokens)
        timeout = check_seconds("timeout", timeout)
        deadline = None
        while True:
            with self._lock:
                now = self._refill()
                if self._tokens >= need - _EPSILON:
                    self._tokens -= need
                    return True
                wait = (need - self._tokens) / self.rate
            if timeout is not None:
                if deadline is None:
                    deadline = now + timeout
                left = deadline - now
                if left <= 0.0:
                    return False
                wait = min(wait, left)
            self._sleep(wait)
            if cancel is not None and cancel.is_set():
                return False

    @property
    def available(self) -> float:
        """Tokens in the bucket now."""
        with self._lock:
            self._refill()
            return self._tokens

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst:g}, available={self.available:.2f})"


@dataclass(frozen=True)
class LevelledStats(PatternStats):
    """:class:`PatternStats` of a :class:`LevelledConsumer` (``rate``: handler starts per second, by its clock)."""

    rate_limit: float  # the token bucket's rate
    concurrency: int  # the handler slots
    peak_concurrency: int  # most handlers that ever ran at once (never above ``concurrency``)
    throttled: int  # messages that had to wait for a token
    started: int  # handler calls begun


class LevelledConsumer(BackgroundConsumer):
    """Consume ``queue`` at most ``rate`` messages per second, with at most ``concurrency`` handlers at once.

    Parameters
    ----------
    url : str
        The Bus to connect to (``memory://name``, ``tcp://host:port``...). The consumer opens its own
        connections: one for taking messages, one per handler thread (for dead letters).
    queue : str
        The queue to drain. It must exist; declare it with ``max_length`` so that a burst cannot grow it
        without bound (producers then get :class:`ringbus.Full`; see :class:`LevelledProducer`).
    handler : callable
        ``handler(message)``; its return value is ignored. Returning acks the message; raising nacks it with
        ``retry`` backoff, and on its last attempt (or raising :class:`ringbus.patterns._handling.Reject`)
        sends it to ``dead_letter`` with the error in its headers.
    rate : float
        Handler starts per second (> 0).
    burst : float or None
        Starts that may follow each other without pause after an idle spell (see :class:`TokenBucket`).
    concurrency : int
        Handler threads: never more handlers run at once.
    prefetch : int or None
        Messages taken from the queue at most (in flight: their visibility timeout runs while they wait for a
        slot and a token). Default ``concurrency`` + a second's worth of ``rate``, at least 2 and at most
        ``4 x concurrency`` more. Keep it above ``concurrency + 1``: on the broker a consume loop whose every
        message is in a handler thread waits up to 0.1 s before it notices their acks.
    retry : RetryPolicy or None
        Backoff between attempts of a failing message.
    max_attempts : int
        The queue's ``max_attempts``: on that attempt a failing message is dead-lettered.
    dead_letter : str or None
        Where failed messages go; ``<queue>.dlq`` by default.
    clock, sleep : callable
        Time for the rate limit (``time.monotonic``, ``time.sleep``); inject simulated time in tests.
    """

    _log = log

    def __init__(self, url: str, queue: str, handler: Callable[[Message], Any], *, rate: float = 100.0,
                 burst: float | None = None, concurrency: int = 4, prefetch: int | None = None,
                 retry: RetryPolicy | None = None, max_attempts: int = 5, dead_letter: str | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        super().__init__(url, handler)
        self.queue = check_name("queue", queue)
        self.bucket = TokenBucket(rate, burst, clock=clock, sleep=sleep)
        self.concurrency = check_count("concurrency", concurrency)
        if prefetch is None:
            prefetch = self.concurrency + max(2, min(int(self.bucket.rate), 4 * self.concurrency))
        self.prefetch = check_count("prefetch", prefetch)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        self.retry = retry or RetryPolicy()
        self.max_attempts = check_count("max_attempts", max_attempts)
        self.dead_letter = check_name("dead_letter queue", dead_letter or f"{queue}.dlq")
        self._clock = clock
        self._counter = StatsCounter()
        self._lock = threading.Lock()
        self._active = self._peak = self._throttled = self._started = 0
        self._starts: deque[float] = deque()  # clock times of handler starts within RATE_WINDOW
        self._since = clock()

    # -- the taking thread ----------------------------------------------------------------------------------------
    def _run(self, stop: threading.Event, ready: Callable[[], None]) -> None:
        slots = threading.BoundedSemaphore(self.concurrency)
        handoff: Ring[Message] = Ring(self.concurrency)  # a slot is taken before a put: never full
        workers = [threading.Thread(target=self._work, args=(handoff, slots), daemon=True,
                                    name=f"ringbus-levelled-{self.queue}-{i}") for i in range(self.concurrency)]
        with connect(self.url) as bus:
            bus.queue_stats(self.queue)  # an undeclared queue fails start(), not the first message
            for worker in workers:
                worker.start()
            self._since = self._clock()
            ready()
            log.info("levelling %r: %g msg/s, burst %g, %d handler(s), prefetch %d", self.queue,
                     self.bucket.rate, self.bucket.burst, self.concurrency, self.prefetch)
            try:
                while not stop.is_set():
                    stream = bus.consume(self.queue, prefetch=self.prefetch, timeout=POLL)
                    try:
                        for message in stream:
                            if not self._dispatch(message, slots, handoff, stop):
                                break
                            if stop.is_set():
                                break
                    finally:
                        stream.close()  # prefetched, never handed out: back to the queue, no attempt counted
            finally:
                handoff.close()  # handler threads finish what they hold, then end
                for worker in workers:
                    worker.join()
            # Leaving `with` closes the bus, which sends the settles the handler threads made.

    def _dispatch(self, message: Message, slots: threading.BoundedSemaphore, handoff: Ring[Message],
                  stop: threading.Event) -> bool:
        """Wait for a slot, then a token, then hand ``message`` over; False (message nacked) if stopped first."""
        while not slots.acquire(timeout=POLL):
            if stop.is_set():
                message.nack(requeue=True)
                return False
        if not self.bucket.try_acquire():
            with self._lock:
                self._throttled += 1
            while not self.bucket.acquire(timeout=POLL, cancel=stop):
                if stop.is_set():
                    slots.release()
                    message.nack(requeue=True)
                    return False
        handoff.put(message, timeout=POLL)
        return True

    # -- handler threads ------------------------------------------------------------------------------------------
    def _work(self, handoff: Ring[Message], slots: threading.BoundedSemaphore) -> None:
        dispatch = Dispatcher(self.queue, self.handler, retry=self.retry, max_attempts=self.max_attempts,
                              dead_letter=self.dead_letter, count=self._counter.add, log=log)
        with connect(self.url) as bus:  # its own connection, for dead letters
            while True:
                try:
                    message = handoff.get(timeout=POLL)
                except Empty:
                    continue
                except Closed:
                    return
                self._begin()
                try:
                    dispatch(bus, message)
                except RingbusError:  # settling failed (bus closed, lease gone): it comes back by itself
                    log.exception("could not settle message %s of %r", message.id, self.queue)
                finally:
                    with self._lock:
                        self._active -= 1
                    slots.release()

    def _begin(self) -> None:
        now = self._clock()
        with self._lock:
            self._active += 1
            self._started += 1
            self._peak = max(self._peak, self._active)
            starts = self._starts
            starts.append(now)
            while starts and starts[0] <= now - RATE_WINDOW:
                starts.popleft()

    # -- reporting ------------------------------------------------------------------------------------------------
    def stats(self) -> LevelledStats:
        """Counts so far; ``rate`` is handler starts per second over the last few seconds of the clock."""
        base = self._counter.snapshot()
        now = self._clock()
        with self._lock:
            starts = self._starts
            while starts and starts[0] <= now - RATE_WINDOW:
                starts.popleft()
            span = min(RATE_WINDOW, now - self._since)
            rate = len(starts) / span if span > 0 else 0.0
            return LevelledStats(base.processed, base.failed, base.retried, base.dead_lettered, base.in_flight,
                                 rate, self.bucket.rate, self.concurrency, self._peak, self._throttled,
                                 self._started, latency_ms=base.latency_ms)


class LevelledProducer:
    """Send to a bounded queue; while it is full (:class:`ringbus.Full`), wait with backoff and try again.

    This is the producer's half of the memory bound: a queue declared with ``max_length`` (and the default
    ``overflow="reject"``) refuses sends beyond it, and this producer slows down to the consumer's pace instead
    of failing or buffering. It raises ``ringbus.Full`` only after ``timeout`` seconds of a full queue, so a
    web request can fail fast with "try again later" (503) rather than hang.

    Parameters
    ----------
    bus : Bus
        A connection owned by the calling thread.
    queue : str
        The queue to send to.
    retry : RetryPolicy or None
        Waits between tries: by default 10 ms doubling up to 0.5 s, with full jitter.
    timeout : float
        Seconds (of ``clock``) to keep trying one message.
    clock, sleep : callable
        ``time.monotonic`` and ``time.sleep`` by default.
    """

    def __init__(self, bus: Bus, queue: str, *, retry: RetryPolicy | None = None, timeout: float = 30.0,
                 clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a ringbus.Bus, not {type(bus).__name__}")
        self.bus = bus
        self.queue = check_name("queue", queue)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        self.retry = retry or RetryPolicy(base=0.01, factor=2.0, max_delay=0.5)
        self.timeout = check_seconds("timeout", timeout)
        self._clock = clock
        self._sleep = sleep
        self.sent = 0  # messages accepted
        self.backoffs = 0  # waits because the queue was full
        self.gave_up = 0  # sends that raised Full after timeout

    def send(self, body: bytes | bytearray | memoryview | Message, **options: Any) -> str:
        """``bus.send(queue, body, **options)``, waiting while the queue is full; returns the message id.

        Raises
        ------
        ringbus.Full
            If the queue stayed full for ``timeout`` seconds.
        """
        deadline = self._clock() + self.timeout
        fulls = 0
        while True:
            try:
                mid = self.bus.send(self.queue, body, **options)
            except Full:
                fulls += 1
                left = deadline - self._clock()
                if left <= 0.0:
                    self.gave_up += 1
                    raise Full(f"queue {self.queue!r} stayed full for {self.timeout:g} s ({fulls} tries); "
                               "the consumer is behind - try again later") from None
                self.backoffs += 1
                self._sleep(min(left, max(self.retry.delay(fulls), 0.001)))
                continue
            self.sent += 1
            return mid
