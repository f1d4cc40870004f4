"""Publisher-subscriber: topic fan-out with wildcard patterns to ephemeral or durable subscribers and groups.

Two kinds of subscriber, named for what happens while they are away:

- **ephemeral** (``durable=False``, like Redis pub/sub): sees only what is published while it is attached.
  A subscriber that is away misses those events; one that is too slow loses events once its buffers are
  full, and counts them in :attr:`SubscriberStats.dropped` (the publisher and the other subscribers never
  wait for it). With the :class:`Publisher` of this module each event also carries a per-topic sequence
  number, so a lone subscriber also counts the events it never saw in :attr:`SubscriberStats.missed`.
- **durable** (``durable=True`` with a ``group``, like a Kafka consumer group): the group's events wait in
  its queue while every member is away or slow - on disk on the embedded broker, in memory on
  ``memory://`` - and are handed out, in publish order, when it comes back. Each event is acked after its
  handler returns; a failing handler gets retries with backoff, then the group's dead-letter queue.
  ``start="earliest"`` lets a *new* group first replay what the topic still retains; ``since=<unix time>``
  replays from a point in time (the Bus keeps no offsets to seek to, so this starts from the earliest
  retained event and skips, acking unhandled, those whose timestamp is older - counted in ``skipped``).

Subscriber groups share load inside a group (each event goes to exactly one member) and every group, like
every ungrouped subscriber, gets every event.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from ringbus.bus import (
    TOPIC_HEADER,
    Bus,
    QueueOptions,
    Subscription,
    check_headers,
    check_name,
    check_topic,
    connect,
    topic_matcher,
)
from ringbus.codec import Serializer
from ringbus.message import HeaderValue, Message, new_id
from ringbus.patterns._handling import Dispatcher, Reject
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = ["Publisher", "Subscriber", "SubscriberStats", "Reject", "topic_of", "PUBLISHER_HEADER", "SEQUENCE_HEADER"]

log = logging.getLogger("ringbus.pubsub")

# Stamped by Publisher: which publisher instance, and the event's number among that publisher's events on its topic.
PUBLISHER_HEADER = "ringbus-publisher"
SEQUENCE_HEADER = "ringbus-seq"

POLL = 0.25  # seconds a worker waits for an event before it looks at stop again
REFRESH = 0.5  # seconds between two looks of a durable worker at its group's backlog
MAX_TRACKED = 10_000  # (publisher, topic) sequences a subscriber remembers for gap counting

Start = Literal["latest", "earliest"]


def topic_of(message: Message) -> str:
    """The topic ``message`` was published on."""
    return str(message.headers.get(TOPIC_HEADER, ""))


def group_queue(group: str) -> str:
    """The queue that holds a durable group's events (``@<group>``, see docs/broker.md)."""
    return f"@{group}"


# --- publishing -----------------------------------------------------------------------------------------------

class Publisher:
    """Publish values on topics through ``bus``; each event gets the publisher's id and a per-topic sequence.

    Parameters
    ----------
    bus : Bus
        The connection to publish through (a Publisher, like its Bus, belongs to one thread).
    serializer : str or None
        How values become bodies (:meth:`ringbus.Message.of`): None picks by type (bytes as they are, str as
        UTF-8, dicts/lists/numbers as msgpack), or ``"json"``, ``"msgpack"``, ...
    name : str or None
        A readable prefix for the publisher id in :data:`PUBLISHER_HEADER` (a random part always follows, so
        a restarted publisher is a new one and its sequences start again at 0).
    """

    def __init__(self, bus: Bus, *, serializer: Serializer | None = None, name: str | None = None) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a ringbus.Bus (from ringbus.connect(url)), not {type(bus).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        self.bus = bus
        self.serializer = serializer
        self.id = f"{name}-{new_id()[:12]}" if name else new_id()[:16]
        self._sequences: dict[str, int] = {}
        self.published = 0

    def _message(self, topic: str, value: object, seq: int, key: str | None,
                 headers: dict[str, HeaderValue] | None) -> Message:
        stamp: dict[str, HeaderValue] = {**(headers or {}), PUBLISHER_HEADER: self.id, SEQUENCE_HEADER: seq}
        if isinstance(value, Message):
            changes: dict[str, Any] = {"headers": {**value.headers, **stamp}}
            if key is not None:
                changes["key"] = key
            return msgspec.structs.replace(value, **changes)
        return Message.of(value, self.serializer, key=key, headers=stamp)

    def _check(self, topic: str, key: str | None, headers: dict[str, HeaderValue] | None) -> None:
        check_topic(topic)
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key must be a str or None, not {type(key).__name__}")
        if headers is not None:
            check_headers(headers)

    def publish(self, topic: str, value: object, *, key: str | None = None,
                headers: dict[str, HeaderValue] | None = None) -> str:
        """Publish one value on ``topic``; return the event id once the bus holds it."""
        self._check(topic, key, headers)
        seq = self._sequences.get(topic, 0)
        event_id = self.bus.publish(topic, self._message(topic, value, seq, key, headers))
        self._sequences[topic] = seq + 1
        self.published += 1
        return event_id

    def publish_many(self, topic: str, values: Iterable[object], *, key: str | None = None,
                     headers: dict[str, HeaderValue] | None = None) -> list[str]:
        """Publish several values on ``topic`` in order with one round trip (one log commit on the broker)."""
        self._check(topic, key, headers)
        first = self._sequences.get(topic, 0)
        messages = [self._message(topic, value, seq, key, headers) for seq, value in zip(itertools.count(first),
                                                                                           values)]
        ids = self.bus.publish_many(topic, messages)
        self._sequences[topic] = first + len(messages)
        self.published += len(messages)
        return ids


# --- subscribing ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubscriberStats(PatternStats):
    """:class:`PatternStats` plus what a subscriber adds."""

    received: int  # events taken from the bus: handled, failed or skipped
    dropped: int  # ephemeral: lost because this subscriber fell behind (broker and client buffers); 0 if durable
    missed: int  # ephemeral, no group, one worker: sequence numbers of a Publisher that never arrived
    skipped: int  # durable with since=: replayed events older than since, acked without the handler
    lag: int | None  # durable: events waiting in the group's queue at the last look (<= 0.5 s old); None if ephemeral


class _Counter(StatsCounter):
    def __init__(self) -> None:
        super().__init__()
        self.received = self.missed = self.skipped = 0


class _Gaps:
    """Counts sequence numbers skipped per (publisher, topic): events that never reached this subscriber."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}

    def missed(self, message: Message) -> int:
        headers = message.headers
        publisher, seq = headers.get(PUBLISHER_HEADER), headers.get(SEQUENCE_HEADER)
        if not isinstance(publisher, str) or not isinstance(seq, int):
            return 0
        key = (publisher, str(headers.get(TOPIC_HEADER, "")))
        last = self._last.pop(key, None)
        if last is None and len(self._last) >= MAX_TRACKED:
            del self._last[next(iter(self._last))]  # forget the sequence seen longest ago
        self._last[key] = seq
        return seq - last - 1 if last is not None and seq > last + 1 else 0


def _check_since(since: object) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime.datetime):
        if since.tzinfo is None:
            raise ValueError("since must be an aware datetime (with tzinfo) or a unix time in seconds")
        return since.timestamp()
    if isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since):
        raise TypeError(f"since must be a unix time in seconds or an aware datetime, not {since!r}")
    return float(since)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class Subscriber:
    """Run ``handler(message)`` for every event published on a topic matching ``pattern``, in worker threads.

    Parameters
    ----------
    url : str
        The bus: ``memory://name`` or the embedded broker (``tcp://``, ``ipc://``). Each worker thread opens
        its own connection.
    pattern : str
        Dot-separated words; ``*`` matches one word, ``#`` zero or more (``orders.#``, ``orders.*.created``).
    handler : callable
        ``handler(message)``: the event is a :class:`ringbus.Message` (``message.value()`` decodes it,
        :func:`topic_of` names its topic). Its return value is ignored. For a durable subscriber an
        exception means retry (after backoff), and after the group queue's ``max_attempts`` (5), or at once
        for :class:`Reject`, the event goes to ``@<group>.dlq`` with the error in its headers; for an
        ephemeral one it is logged and counted.
    group : str or None
        Members of one group (in this Subscriber and in others, in any process) share its events. Required
        when durable. An ephemeral Subscriber with ``workers > 1`` and no group gets a private one.
    durable : bool
        False: ephemeral (away = missed, slow = dropped and counted). True: the group's events wait for it.
    start : {"latest", "earliest"}
        Where a *new* durable group begins; an existing group goes on where it left off.
    since : float, datetime or None
        Durable only: replay from this unix time (implies ``start="earliest"``): older events are acked
        without calling the handler. How far back depends on the broker's retention (24 h / 64 MiB by default).
    workers : int
        Handler threads. One keeps publish order; several share the events (order across them is lost).
    prefetch : int
        Durable: events each worker holds unacked (hides the round trip; all come back if it dies).
    retry : RetryPolicy or None
        Durable: delay before the next attempt of a failed event.
    connect_options : mapping or None
        Keyword arguments of :func:`ringbus.connect` (e.g. ``{"hwm": 1000}`` to bound an ephemeral
        subscriber's lag on the broker).
    """

    def __init__(self, url: str, pattern: str, handler: Callable[[Message], Any], *, group: str | None = None,
                 durable: bool = False, start: Start = "latest", since: float | datetime.datetime | None = None,
                 workers: int = 1, prefetch: int = 256, retry: RetryPolicy | None = None,
                 connect_options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str such as 'memory://events' or 'tcp://127.0.0.1:5555', not "
                            f"{type(url).__name__}")
        topic_matcher(pattern)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if group is not None:
            check_name("subscription group", group)
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be a bool, not {type(durable).__name__}")
        if durable and group is None:
            raise ValueError("a durable Subscriber needs a group: the group is what remembers where it left off")
        if start not in ("latest", "earliest"):
            raise ValueError(f"start must be 'latest' or 'earliest', got {start!r}")
        self.since = _check_since(since)
        if not durable and (start == "earliest" or self.since is not None):
            raise ValueError("start='earliest' and since= replay retained events into a durable group; an "
                             "ephemeral subscriber only sees what is published while it is attached")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
        if connect_options is not None and not isinstance(connect_options, Mapping):
            raise TypeError(f"connect_options must be a mapping or None, not {type(connect_options).__name__}")
        self.url = url
        self.pattern = pattern
        self.handler = handler
        self.durable = durable
        self.workers = _check_int("workers", workers)
        self.prefetch = _check_int("prefetch", prefetch)
        self.start_at: Start = "earliest" if self.since is not None else start
        self.retry = retry or RetryPolicy()
        self.connect_options = dict(connect_options or {})
        self._track_gaps = not durable and group is None and self.workers == 1
        if group is None and not durable and self.workers > 1:
            group = f"sub-{new_id()[:16]}"  # the workers share one ephemeral subscriber's events
        self.group = group
        self._max_attempts = QueueOptions().max_attempts  # what the broker declares a group's queue with
        self._counter = _Counter()
        # Per worker: its open subscription, the drop count it last read when idle, and the drops of the
        # subscriptions it closed before (after a reconnect).
        self._subscriptions: list[Subscription | None] = [None] * self.workers
        self._drops_open = [0] * self.workers
        self._drops_closed = [0] * self.workers
        self._lag: int | None = None if not durable else 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ready = threading.Semaphore(0)
        self._errors: list[BaseException] = []

    # -- lifetime -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Subscriber:
        """Start the workers; return once every one is attached (events published from then on reach it).

        Raises the error of a worker that could not attach, or TimeoutError.
        """
        if self._threads:
            raise RuntimeError("this Subscriber was started already; make a new one")
        for index in range(self.workers):
            thread = threading.Thread(target=self._worker, args=(index,), daemon=True,
                                      name=f"ringbus-subscriber-{self.pattern}-{index}")
            self._threads.append(thread)
            thread.start()
        deadline = time.monotonic() + timeout
        for _ in range(self.workers):
            if not self._ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
                self.stop(1.0)
                raise TimeoutError(f"Subscriber to {self.pattern!r} on {self.url} not attached within {timeout} s")
            if self._errors:
                self.stop(1.0)
                raise self._errors[0]
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop taking events, finish the ones in hand, give back the prefetched ones; True if all ended in time."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads) and not self._stop.is_set()

    def __enter__(self) -> Subscriber:
        return self.start() if not self._threads else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> SubscriberStats:
        """Counts so far (see :class:`SubscriberStats`)."""
        base = self._counter.snapshot()
        counter = self._counter
        return SubscriberStats(**base.__dict__, received=counter.received, dropped=self._dropped(),
                               missed=counter.missed, skipped=counter.skipped, lag=self._lag)

    def _dropped(self) -> int:
        total = sum(self._drops_closed)
        outside = threading.current_thread() not in self._threads
        for index, subscription in enumerate(self._subscriptions):
            live = 0
            if outside and subscription is not None:
                # From a thread that does not own the subscription's bus this is the count the broker sent
                # with its last event (no round trip); the worker asks the broker itself whenever it is idle.
                live = subscription.dropped
            total += max(live, self._drops_open[index])
        return total

    # -- the workers ----------------------------------------------------------------------------------------------
    def _worker(self, index: int) -> None:
        ready = False
        failures = 0
        while not self._stop.is_set():
            try:
                with connect(self.url, **self.connect_options) as bus:
                    if self.durable:
                        bus.subscribe(self.pattern, group=self.group, durable=True, start=self.start_at)
                        ready = self._attached(ready)
                        failures = 0
                        self._consume_group(bus, index)
                    else:
                        subscription = bus.subscribe(self.pattern, group=self.group)
                        self._subscriptions[index] = subscription
                        ready = self._attached(ready)
                        failures = 0
                        try:
                            self._receive(bus, subscription, index)
                        finally:
                            self._subscriptions[index] = None
                            self._drops_closed[index] += self._drops_open[index]
                            self._drops_open[index] = 0
                            subscription.close()
            except Exception as exc:  # noqa: BLE001 - the bus went away, say: reconnect with backoff
                if not ready:
                    self._errors.append(exc)
                    self._ready.release()
                    return
                if self._stop.is_set():
                    return
                failures += 1
                delay = self.retry.delay(failures)
                log.exception("subscriber to %r lost its bus; reconnecting in %.2f s", self.pattern, delay)
                self._stop.wait(delay)

    def _attached(self, ready: bool) -> bool:
        if not ready:
            self._ready.release()
        return True

    def _receive(self, bus: Bus, subscription: Subscription, index: int) -> None:
        """Ephemeral: one event at a time; the broker is asked for the drop count whenever the worker is idle.

        Only when idle: the broker's answer travels behind the events, and a subscriber that is behind has a
        full pipe, where the broker drops the answer like an event (and the question would time out).
        """
        counter, invoke, stop = self._counter, self._invoke, self._stop
        gaps = _Gaps() if self._track_gaps else None
        idle = False
        while not stop.is_set():
            message = subscription.receive(timeout=POLL)
            if message is None:
                self._drops_open[index] = subscription.dropped  # a round trip on the broker
                idle = True
                continue
            idle = False
            missed = gaps.missed(message) if gaps is not None else 0
            counter.add(received=1, missed=missed, in_flight=1)
            try:
                invoke(bus, message)
            except Exception:  # noqa: BLE001 - an ephemeral event is not retried: count it and go on
                log.exception("handler of ephemeral subscriber %r failed on event %s", self.pattern, message.id)
                counter.add(failed=1, in_flight=-1)
            else:
                counter.add(processed=1, in_flight=-1)
        if idle:
            self._drops_open[index] = subscription.dropped

    def _consume_group(self, bus: Bus, index: int) -> None:
        """Durable: consume the group's queue with prefetch, ack after the handler, retry or dead-letter."""
        queue = group_queue(str(self.group))
        stop, since, counter = self._stop, self.since, self._counter
        dispatch = Dispatcher(queue, functools.partial(self._invoke, bus), retry=self.retry,
                              max_attempts=self._max_attempts, dead_letter=QueueOptions().dead_letter_queue(queue),
                              count=counter.add, log=log)
        look = 0.0
        while not stop.is_set():
            messages = bus.consume(queue, prefetch=self.prefetch, timeout=POLL)
            try:
                for message in messages:
                    if since is not None and message.timestamp < since:
                        message.ack()
                        counter.add(received=1, skipped=1)
                    else:
                        counter.add(received=1)
                        dispatch(bus, message)
                    if index == 0 and time.monotonic() >= look:
                        self._lag = bus.queue_stats(queue).depth
                        look = time.monotonic() + REFRESH
                    if stop.is_set():
                        break
            finally:
                messages.close()  # prefetched, not handed out: back, no attempt
            if index == 0:
                self._lag = bus.queue_stats(queue).depth
                look = time.monotonic() + REFRESH

    def _invoke(self, bus: Bus, message: Message) -> None:
        """Run the handler on one event (a subclass may do more with the worker's ``bus`` before the ack)."""
        self.handler(message)
