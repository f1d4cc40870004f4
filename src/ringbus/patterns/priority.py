"""Priority queue: urgent messages first without starving the rest - one queue with priorities, or weighted queues.

The two designs of the pattern (Azure Architecture Center, "Priority Queue pattern"):

(a) **One queue, message priorities.** :class:`PrioritySender` stamps each message with its level's priority;
    the Bus delivers the highest priority first. Starvation guard (*aging*): a message below the top level is
    sent with ``ttl=max_wait`` and the queue's dead letters go to ``<queue>.aging``. When a message has waited
    ``max_wait`` seconds the broker expires it there, and the ager thread of :class:`PriorityConsumer` sends it
    back to the queue at ``aged_priority`` (above the top level by default), so it is next in line. Nothing
    scans the queue; the broker's own TTL timer does the work. Real dead letters (max_attempts, rejected, the
    sender's own ``ttl``) pass through the ager to ``<queue>.dlq``.

(b) **Several queues, consumed with weights.** :class:`PrioritySender` sends each level to its own queue;
    :class:`WeightedConsumer` serves the queues by smooth weighted round-robin (e.g. high:normal:low = 8:3:1
    gives 8, 3 and 1 turns of every 12 while all three have work; an empty queue's turns go to the others,
    so it is never idle while any queue has work). Starvation guard: a queue that has had work but no turn for
    ``max_wait`` seconds gets the next turn.

Headers every message carries: ``ringbus-level`` (its level's name) and ``ringbus-sent-at`` (wall-clock time
of the first send) - so a handler can measure its wait - and, once aged, ``ringbus-aged`` (times re-sent) and
``ringbus-prior-attempts`` (deliveries before it was re-sent).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ringbus.bus import Bus, check_name, check_seconds, connect
from ringbus.errors import Full, RingbusError, Unsupported
from ringbus.message import HeaderValue, Message
from ringbus.patterns._handling import DEAD_FROM, DEAD_REASON, Dispatcher
from ringbus.patterns._lifecycle import BackgroundConsumer, check_count, check_positive
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = [
    "PrioritySender",
    "PriorityConsumer",
    "WeightedConsumer",
    "PriorityStats",
    "declare_priority_queue",
    "aging_queue",
    "DEFAULT_LEVELS",
    "LEVEL_HEADER",
    "SENT_AT_HEADER",
    "AGED_HEADER",
    "PRIOR_ATTEMPTS_HEADER",
    "EXPIRES_AT_HEADER",
]

log = logging.getLogger("ringbus.priority")

DEFAULT_LEVELS: Mapping[str, int] = {"high": 2, "normal": 1, "low": 0}

LEVEL_HEADER = "ringbus-level"
SENT_AT_HEADER = "ringbus-sent-at"  # time.time() of the first send
AGED_HEADER = "ringbus-aged"  # times the ager sent it back at a raised priority
PRIOR_ATTEMPTS_HEADER = "ringbus-prior-attempts"  # deliveries before it was last re-sent by the ager
EXPIRES_AT_HEADER = "ringbus-expires-at"  # time.time() its sender's own ttl ends (only when it can age)

POLL = 0.25  # seconds a wait lasts before a consumer looks at stop() again
_replace = msgspec.structs.replace


def aging_queue(queue: str) -> str:
    """The queue where ``queue``'s dead letters (expired ones: due for aging) go first: ``<queue>.aging``."""
    return f"{queue}.aging"


def declare_priority_queue(bus: Bus, queue: str, **options: Any) -> None:
    """Declare ``queue`` for design (a): its dead letters go to ``<queue>.aging``, whose own go to ``<queue>.dlq``.

    ``options`` are those of :meth:`Bus.declare_queue` except ``dead_letter`` and ``ttl`` (the ager relies on
    them). Idempotent, like ``declare_queue``.
    """
    for name in ("dead_letter", "ttl"):
        if name in options:
            raise ValueError(f"declare_priority_queue sets {name} itself (aging relies on it); leave it out")
    check_name("queue", queue)
    bus.declare_queue(aging_queue(queue), durable=options.get("durable", True), dead_letter=f"{queue}.dlq")
    bus.declare_queue(queue, dead_letter=aging_queue(queue), **options)


def _check_levels(levels: object) -> dict[str, int]:
    if not isinstance(levels, Mapping) or not levels:
        raise TypeError(f"levels must be a non-empty mapping of level name to int priority, not {levels!r}")
    for name, priority in levels.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"level names must be non-empty str, got {name!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"level {name!r}: priority must be an int, not {type(priority).__name__}")
    if len(set(levels.values())) != len(levels):
        raise ValueError(f"levels must have distinct priorities, got {dict(levels)}")
    return dict(levels)


class PrioritySender:
    """Send messages by level name: to one queue with priorities (design a) or to one queue per level (design b).

    Parameters
    ----------
    bus : Bus
        A connection owned by the calling thread.
    target : str or mapping
        A queue name: design (a), one queue, each level a priority (``levels``). A mapping of level name to
        queue name: design (b), each level its own queue (consume them with :class:`WeightedConsumer`).
    levels : mapping of str to int, optional
        Design (a) only: level name to priority (higher first). Default ``{"high": 2, "normal": 1, "low": 0}``.
    max_wait : float or mapping of str to float, optional
        Design (a) only: seconds a message of a level below the top may wait before it ages (is sent again
        at the consumer's ``aged_priority``). One number for every level below the top, or per level; None
        (default) for no aging. The top level never ages.
    clock : callable
        Wall-clock time for ``ringbus-sent-at`` (``time.time``); processes on one host share it.
    """

    def __init__(self, bus: Bus, target: str | Mapping[str, str], *, levels: Mapping[str, int] | None = None,
                 max_wait: float | Mapping[str, float] | None = None, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a ringbus.Bus, not {type(bus).__name__}")
        self.bus = bus
        self._clock = clock
        self._max_wait: dict[str, float] = {}
        if isinstance(target, str):
            self.queue: str | None = check_name("queue", target)
            self.queues: dict[str, str] = {}
            self.levels = _check_levels(DEFAULT_LEVELS if levels is None else levels)
            top = max(self.levels, key=self.levels.__getitem__)
            if isinstance(max_wait, Mapping):
                unknown = set(max_wait) - set(self.levels)
                if unknown:
                    raise ValueError(f"max_wait names unknown level(s) {sorted(unknown)}; levels: {list(self.levels)}")
                waits = {name: max_wait[name] for name in max_wait if name != top}
            else:
                waits = {} if max_wait is None else {name: max_wait for name in self.levels if name != top}
            for name, seconds in waits.items():
                positive = check_positive(f"max_wait of level {name!r}", seconds, allow_none=True)
                if positive is not None:
                    self._max_wait[name] = positive
            # Aging relies on the Bus contract's ttl: a message waits at most ttl seconds, wherever it waits. An
            # engine whose ttl ends only at the head of the queue says so (``ttl_expires_waiting = False``).
            if self._max_wait and not getattr(bus, "ttl_expires_waiting", True):
                raise Unsupported(
                    f"the priority pattern's aging (max_wait) needs a ttl that expires a message where it waits; "
                    f"on {type(bus).__name__} a ttl ends only at the head of the queue or at delivery, so a message "
                    "behind a backlog of higher priorities would never age. Use design (b) there: one queue per "
                    "level and a WeightedConsumer with max_wait", feature="aging")
        elif isinstance(target, Mapping):
            if levels is not None or max_wait is not None:
                raise ValueError("levels and max_wait belong to design (a), one queue; with one queue per level, "
                                 "the WeightedConsumer's weights and max_wait decide the order")
            if not target:
                raise ValueError("target must name at least one level's queue")
            self.queue = None
            self.queues = {str(level): check_name("queue", queue) for level, queue in target.items()}
            self.levels = {}
        else:
            raise TypeError(f"target must be a queue name or a mapping of level to queue name, not "
                            f"{type(target).__name__}")

    @property
    def max_wait(self) -> dict[str, float]:
        """Design (a): seconds before a message of each ageing level is raised."""
        return dict(self._max_wait)

    def declare(self, **options: Any) -> None:
        """Declare the queue(s): :func:`declare_priority_queue` for design (a), ``declare_queue`` for each of (b)."""
        if self.queue is not None:
            declare_priority_queue(self.bus, self.queue, **options)
        else:
            for queue in self.queues.values():
                self.bus.declare_queue(queue, **options)

    def send(self, body: bytes | bytearray | memoryview | Message, level: str, *, key: str | None = None,
             headers: dict[str, HeaderValue] | None = None, ttl: float | None = None, delay: float | None = None,
             dedup_id: str | None = None) -> str:
        """Send ``body`` at ``level``; returns the message id. ``ttl`` is the message's own life span."""
        known = self.levels if self.queue is not None else self.queues
        if level not in known:
            raise ValueError(f"unknown level {level!r}; levels: {list(known)}")
        ttl = check_seconds("ttl", ttl)
        now = float(self._clock())
        stamped: dict[str, HeaderValue] = {LEVEL_HEADER: level, SENT_AT_HEADER: now}
        if headers:
            stamped.update(headers)
        if self.queue is None:
            return self.bus.send(self.queues[level], body, key=key, headers=stamped, ttl=ttl, delay=delay,
                                 dedup_id=dedup_id)
        age = self._max_wait.get(level)
        if age is not None:
            if ttl is not None:
                stamped[EXPIRES_AT_HEADER] = now + ttl
            ttl = age if ttl is None else min(age, ttl)
        return self.bus.send(self.queue, body, key=key, priority=self.levels[level], headers=stamped, ttl=ttl,
                             delay=delay, dedup_id=dedup_id)


@dataclass(frozen=True)
class PriorityStats(PatternStats):
    """:class:`PatternStats` plus what was handled of each level (design a) or queue (design b)."""

    by_level: dict[str, int] = field(default_factory=dict)  # handler successes, per level name / queue name
    aged: int = 0  # (a) messages the ager raised; (b) turns given to a queue because it waited max_wait


class _Counts:
    """Shared counts of a priority consumer (several threads report)."""

    def __init__(self) -> None:
        self.counter = StatsCounter()
        self.lock = threading.Lock()
        self.by_level: dict[str, int] = {}
        self.aged = 0

    def handled(self, level: str) -> None:
        with self.lock:
            self.by_level[level] = self.by_level.get(level, 0) + 1

    def add_aged(self) -> None:
        with self.lock:
            self.aged += 1

    def snapshot(self) -> PriorityStats:
        base = self.counter.snapshot()
        with self.lock:
            return PriorityStats(base.processed, base.failed, base.retried, base.dead_lettered, base.in_flight,
                                 base.rate, dict(self.by_level), self.aged, latency_ms=base.latency_ms)


def _check_retry(retry: object) -> RetryPolicy:
    if retry is None:
        return RetryPolicy()
    if not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
    return retry


class PriorityConsumer(BackgroundConsumer):
    """Design (a): consume one priority queue, highest first, and age what waits too long.

    Parameters
    ----------
    url : str
        The Bus; the consumer opens its own connections (one to consume, one for the ager).
    queue : str
        Declared with :func:`declare_priority_queue` (or :meth:`PrioritySender.declare`).
    handler : callable
        ``handler(message)``; returning acks, raising retries with backoff and dead-letters to
        ``<queue>.dlq`` (with the error in the headers) on the last attempt.
    levels : mapping of str to int, optional
        The sender's levels; default ``{"high": 2, "normal": 1, "low": 0}``.
    aged_priority : int or None
        Priority of an aged message; default the top level's + 1 (overdue work goes before everything).
        Give the top level's priority to queue aged messages behind the top messages already waiting.
    prefetch : int
        Messages taken ahead (1 by default). A prefetched message keeps its place even when a more urgent one
        arrives, so each one above 1 trades strict priority for throughput on the broker.
    retry, max_attempts :
        Backoff between attempts of a failing message, and the queue's ``max_attempts``.
    age : bool
        Run the ager thread (default). Several consumers of one queue may all run one: they share the work.
    clock : callable
        Wall-clock time (``time.time``), to judge the sender's own ttl.
    """

    _log = log

    def __init__(self, url: str, queue: str, handler: Callable[[Message], Any], *,
                 levels: Mapping[str, int] | None = None, aged_priority: int | None = None, prefetch: int = 1,
                 retry: RetryPolicy | None = None, max_attempts: int = 5, age: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(url, handler)
        self.queue = check_name("queue", queue)
        self.levels = _check_levels(DEFAULT_LEVELS if levels is None else levels)
        top = max(self.levels.values())
        if aged_priority is None:
            aged_priority = top + 1
        if isinstance(aged_priority, bool) or not isinstance(aged_priority, int):
            raise TypeError(f"aged_priority must be an int, not {type(aged_priority).__name__}")
        if aged_priority < top:
            raise ValueError(f"aged_priority must be >= the top level's priority {top}, got {aged_priority}: an aged "
                             "message would wait behind the messages it has already waited for")
        self.aged_priority = aged_priority
        self.prefetch = check_count("prefetch", prefetch)
        self.retry = _check_retry(retry)
        self.max_attempts = check_count("max_attempts", max_attempts)
        self.age = bool(age)
        self.dead_letter = f"{queue}.dlq"
        self._clock = clock
        self._counts = _Counts()
        self._names = {priority: name for name, priority in self.levels.items()}

    def _counted(self, message: Message) -> Any:
        result = self.handler(message)
        level = message.headers.get(LEVEL_HEADER)
        if not isinstance(level, str):
            level = self._names.get(message.priority, f"priority {message.priority}")
        self._counts.handled(level)
        return result

    def _run(self, stop: threading.Event, ready: Callable[[], None]) -> None:
        dispatch = Dispatcher(self.queue, self._counted, retry=self.retry, max_attempts=self.max_attempts,
                              dead_letter=self.dead_letter, count=self._counts.counter.add, log=log)
        ager: threading.Thread | None = None
        failure: list[BaseException] = []
        with connect(self.url) as bus:
            bus.queue_stats(self.queue)
            bus.queue_stats(aging_queue(self.queue))  # declared with declare_priority_queue?
            if self.age:
                ager = threading.Thread(target=self._ager, args=(stop, failure), daemon=True,
                                        name=f"ringbus-ager-{self.queue}")
                ager.start()
            ready()
            try:
                while not stop.is_set():
                    stream = bus.consume(self.queue, prefetch=self.prefetch, timeout=POLL)
                    try:
                        for message in stream:
                            dispatch(bus, message)
                            if stop.is_set():
                                break
                    finally:
                        stream.close()
            finally:
                stop.set()
                if ager is not None:
                    ager.join()
        if failure:
            raise failure[0]

    # -- the ager ------------------------------------------------------------------------------------------------
    def _ager(self, stop: threading.Event, failure: list[BaseException]) -> None:
        source = aging_queue(self.queue)
        try:
            with connect(self.url) as bus:
                while not stop.is_set():
                    stream = bus.consume(source, prefetch=64, timeout=POLL)
                    try:
                        for dead in stream:
                            self._age_one(bus, dead)
                            if stop.is_set():
                                break
                    finally:
                        stream.close()
        except BaseException as exc:  # noqa: BLE001 - stops the consumer, raised by its stop()
            log.exception("the ager of %r failed; stopping the consumer", self.queue)
            failure.append(exc)
            stop.set()

    def _age_one(self, bus: Bus, dead: Message) -> None:
        headers = dict(dead.headers)
        reason = headers.pop(DEAD_REASON, None)
        headers.pop(DEAD_FROM, None)
        expires = headers.get(EXPIRES_AT_HEADER)
        now = float(self._clock())
        own_ttl_over = isinstance(expires, (int, float)) and not isinstance(expires, bool) and now >= expires
        if reason != "expired" or own_ttl_over:
            # A real dead letter (max_attempts, rejected, nacked, overflow) or the sender's own ttl ran out.
            # A copy: sending a delivered Message object itself would detach it from its delivery (no ack).
            bus.send(self.dead_letter, _replace(dead, headers=dict(dead.headers)))
            dead.ack()
            log.info("message %s of %r dead-lettered to %r (%s)", dead.id, self.queue, self.dead_letter, reason)
            return
        aged = int(headers.get(AGED_HEADER) or 0) + 1
        headers[AGED_HEADER] = aged
        headers[PRIOR_ATTEMPTS_HEADER] = int(headers.get(PRIOR_ATTEMPTS_HEADER) or 0) + dead.attempts
        ttl = None if expires is None else max(float(expires) - now, 0.001)
        try:
            bus.send(self.queue, _replace(dead, priority=self.aged_priority, headers=headers, attempts=0), ttl=ttl)
        except Full:
            # The queue is at max_length: try again later. After the aging queue's max_attempts, it goes to
            # <queue>.dlq (reason max_attempts) rather than waiting for ever.
            dead.nack(requeue=True, delay=self.retry.delay(dead.attempts + 1))
            return
        dead.ack()
        self._counts.add_aged()
        log.debug("message %s of %r aged (%d): back at priority %d", dead.id, self.queue, aged, self.aged_priority)

    def stats(self) -> PriorityStats:
        """Counts so far; ``by_level`` counts handled messages per level, ``aged`` those the ager raised."""
        return self._counts.snapshot()


class WeightedConsumer(BackgroundConsumer):
    """Design (b): serve several queues by smooth weighted round-robin, with a max_wait starvation guard.

    One thread, one connection, one message at a time (run several consumers for more). Each step it holds
    at most one message taken ahead from each queue that has work (in flight: its visibility timeout runs),
    picks a queue, and handles that queue's message:

    - a queue that has had work but no turn for ``max_wait`` seconds goes first (the one waiting longest);
    - otherwise smooth weighted round-robin among the queues with work: each adds its weight to its credit,
      the one with most credit is served and gives back the sum of the weights. Credit is not saved while a
      queue is empty, so a queue back from idle cannot claim a run of turns.

    Parameters
    ----------
    url : str
        The Bus.
    queues : mapping of str to int
        Queue name to weight (>= 1), e.g. ``{"jobs.high": 8, "jobs.normal": 3, "jobs.low": 1}``.
    handler : callable
        As for :class:`PriorityConsumer`; failures go to ``<queue>.dlq`` of the message's queue.
    max_wait : float or None
        Seconds (of ``clock``) a queue with work may go unserved; None: weights alone decide. Keep it above
        the rotation's natural gap (sum of weights / weight x handling time) or it overrides the weights.
    clock : callable
        Monotonic seconds for ``max_wait``; inject a counter to reason in simulated time.
    recheck : float
        Seconds (real) between two looks at a queue found empty while others have work: a new message there
        waits at most this long to be seen.
    idle_wait : float
        Seconds (real) each queue is waited on in turn when every queue is empty.
    """

    _log = log

    def __init__(self, url: str, queues: Mapping[str, int], handler: Callable[[Message], Any], *,
                 max_wait: float | None = None, retry: RetryPolicy | None = None, max_attempts: int = 5,
                 clock: Callable[[], float] = time.monotonic, recheck: float = 0.01, idle_wait: float = 0.05) -> None:
        super().__init__(url, handler)
        if not isinstance(queues, Mapping) or not queues:
            raise TypeError(f"queues must be a non-empty mapping of queue name to weight, not {queues!r}")
        weights = {check_name("queue", name): check_count(f"weight of queue {name!r}", weight)
                   for name, weight in queues.items()}
        self.weights = dict(sorted(weights.items(), key=lambda item: -item[1]))  # heaviest first: wins ties
        self.max_wait = check_positive("max_wait", max_wait, allow_none=True)
        self.retry = _check_retry(retry)
        self.max_attempts = check_count("max_attempts", max_attempts)
        self._clock = clock
        self.recheck = check_seconds("recheck", recheck)
        self.idle_wait = check_positive("idle_wait", idle_wait)
        self._counts = _Counts()

    def _run(self, stop: threading.Event, ready: Callable[[], None]) -> None:
        queues = list(self.weights)
        dispatchers = {queue: Dispatcher(queue, self._counted(queue), retry=self.retry,
                                         max_attempts=self.max_attempts, dead_letter=f"{queue}.dlq",
                                         count=self._counts.counter.add, log=log)
                       for queue in queues}
        held: dict[str, Message | None] = dict.fromkeys(queues)
        looked = dict.fromkeys(queues, -math.inf)  # real time a queue was last found empty
        now = self._clock()
        since = dict.fromkeys(queues, now)  # when each queue last had a turn (or was found empty)
        credit = dict.fromkeys(queues, 0)
        with connect(self.url) as bus:
            for queue in queues:
                bus.queue_stats(queue)
            ready()
            try:
                while not stop.is_set():
                    self._look(bus, held, looked, since, credit)
                    waiting = [queue for queue in queues if held[queue] is not None]
                    if not waiting:
                        self._idle(bus, held, since, stop)
                        continue
                    queue = self._choose(waiting, credit, since)
                    message, held[queue] = held[queue], None
                    dispatchers[queue](bus, message)  # type: ignore[arg-type]  # _choose picks a queue holding one
                    since[queue] = self._clock()
            finally:
                for message in held.values():
                    if message is not None:
                        try:
                            message.nack(requeue=True)  # taken ahead, never handled: back to its queue
                        except RingbusError:
                            pass

    def _counted(self, queue: str) -> Callable[[Message], Any]:
        handler, handled = self.handler, self._counts.handled

        def counted(message: Message) -> Any:
            result = handler(message)
            handled(queue)
            return result

        return counted

    def _look(self, bus: Bus, held: dict[str, Message | None], looked: dict[str, float], since: dict[str, float],
              credit: dict[str, int]) -> None:
        """Take one message ahead from each queue that may have work (empty ones at most every ``recheck`` s)."""
        now = time.monotonic()
        busy = any(message is not None for message in held.values())
        for queue in held:
            if held[queue] is not None or (busy and now - looked[queue] < self.recheck):
                continue
            message = bus.receive(queue, timeout=0)
            if message is None:
                looked[queue] = now
                since[queue] = self._clock()  # no work: not starving
                credit[queue] = 0
            else:
                held[queue] = message

    def _idle(self, bus: Bus, held: dict[str, Message | None], since: dict[str, float], stop: threading.Event) -> None:
        """Every queue is empty: wait on each in turn, ``idle_wait`` seconds at a time, until one has work."""
        for queue in held:
            message = bus.receive(queue, timeout=self.idle_wait)
            if message is not None:
                held[queue] = message
                since[queue] = self._clock()
                return
            if stop.is_set():
                return

    def _choose(self, waiting: list[str], credit: dict[str, int], since: dict[str, float]) -> str:
        if self.max_wait is not None:
            now = self._clock()
            overdue = [queue for queue in waiting if now - since[queue] >= self.max_wait]
            if overdue:
                self._counts.add_aged()
                return min(overdue, key=since.__getitem__)
        weights = self.weights
        total = 0
        for queue in waiting:
            credit[queue] += weights[queue]
            total += weights[queue]
        queue = max(waiting, key=credit.__getitem__)  # ties: the heavier queue (waiting is heaviest first)
        credit[queue] -= total
        return queue

    def stats(self) -> PriorityStats:
        """Counts so far; ``by_level`` counts handled messages per queue, ``aged`` the turns max_wait forced."""
        return self._counts.snapshot()
