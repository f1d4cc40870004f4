"""Choreography: services that react to events and emit events, with no coordinator; flows traced by correlation id.

A :class:`Service` registers handlers with ``@service.on("OrderPlaced")``. Each handler is a durable
subscription group ``<service>.<EventName>`` on the topic ``events.<EventName>``, so a service that is down
or restarting catches up on return, and several processes of one service share its events. A handler gets
the :class:`Event` and a :class:`Context`; events it emits with ``ctx.emit("PaymentCompleted", data)`` carry
the handled event's correlation id and name it as their cause, and are published only after the handler
returned - then the handled event is acked. The id of an emitted event is derived from the handled event's
id, so a redelivery (the service died between publishing and acking) emits the *same* ids again: downstream
services skip an id they handled recently and the :class:`EventLog` stores an id once.

The :class:`EventLog` is one more subscriber (a durable group on ``events.#``) that writes every event to
SQLite; ``log.flow(correlation_id)`` is one business flow end to end, in the order the events were published.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringbus.bus import Bus, check_name, check_topic, connect
from ringbus.message import Message, new_id
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats
from ringbus.patterns.pubsub import Start, Subscriber

__all__ = ["Event", "Context", "Service", "ServiceStats", "EventLog", "EventLogStats", "EVENT_HEADER",
           "CORRELATION_HEADER", "CAUSATION_HEADER", "SOURCE_HEADER"]

log = logging.getLogger("ringbus.choreography")

EVENT_HEADER = "event-name"
CORRELATION_HEADER = "event-correlation-id"
CAUSATION_HEADER = "event-causation-id"
SOURCE_HEADER = "event-source"
PREFIX = "events"  # events travel on topic "<prefix>.<EventName>"
REMEMBERED = 100_000  # event ids a handler remembers, to skip a repeat of one it handled


@dataclass(frozen=True)
class Event:
    """One event of a flow."""

    name: str  # "OrderPlaced"
    data: Any  # the JSON value it carries
    id: str  # unique; derived from the cause's id for emitted events
    correlation_id: str  # the business flow it belongs to (the first event's id unless given)
    causation_id: str | None  # the id of the event whose handler emitted it; None for the first
    source: str | None  # the service that emitted it
    timestamp: float  # unix time it was emitted

    @classmethod
    def from_message(cls, message: Message) -> Event:
        """The event a message carries (raises ValueError if it carries none)."""
        headers = message.headers
        name, correlation = headers.get(EVENT_HEADER), headers.get(CORRELATION_HEADER)
        if not isinstance(name, str) or not isinstance(correlation, str):
            raise ValueError(f"message {message.id} is not an event: it lacks the {EVENT_HEADER!r} and "
                             f"{CORRELATION_HEADER!r} headers")
        causation, source = headers.get(CAUSATION_HEADER), headers.get(SOURCE_HEADER)
        return cls(name, message.value(), message.id, correlation, causation if isinstance(causation, str) else None,
                   source if isinstance(source, str) else None, float(message.timestamp))


def _check_event_name(name: object) -> str:
    if not isinstance(name, str) or "." in name:
        raise ValueError(f"event name must be one topic word (letters, digits, _ - :), got {name!r}")
    check_topic(name)
    return name


def _event_message(name: str, data: Any, *, event_id: str, correlation_id: str, causation_id: str | None,
                   source: str) -> Message:
    headers: dict[str, Any] = {EVENT_HEADER: name, CORRELATION_HEADER: correlation_id, SOURCE_HEADER: source}
    if causation_id is not None:
        headers[CAUSATION_HEADER] = causation_id
    return Message.of(data, "json", id=event_id, key=correlation_id, headers=headers)


def _derived_id(service: str, cause: str, index: int) -> str:
    """The id of the ``index``-th event ``service`` emits while handling ``cause``: the same on every redelivery."""
    return hashlib.blake2b(f"{service}\x00{cause}\x00{index}".encode(), digest_size=16).hexdigest()


class Context:
    """What a handler gets besides the event: ``emit`` follow-up events of the same flow."""

    def __init__(self, service: str, event: Event) -> None:
        self.service = service
        self.event = event
        self.emitted: list[tuple[str, Message]] = []

    def emit(self, name: str, data: Any = None) -> str:
        """Emit event ``name`` with JSON ``data`` once the handler returns; return its id.

        Its correlation id is the handled event's, its causation id the handled event's id.
        """
        _check_event_name(name)
        event_id = _derived_id(self.service, self.event.id, len(self.emitted))
        message = _event_message(name, data, event_id=event_id, correlation_id=self.event.correlation_id,
                                 causation_id=self.event.id, source=self.service)
        self.emitted.append((name, message))
        return event_id


EventHandler = Callable[[Event, Context], Any]


@dataclass(frozen=True)
class ServiceStats(PatternStats):
    """:class:`PatternStats` summed over a service's handlers, plus what a service adds."""

    emitted: int  # events published by its handlers
    duplicates: int  # events skipped because this handler had handled the same id already


class _HandlerSubscriber(Subscriber):
    """One handler of a service: a durable group; emitted events are published before the handled one is acked."""

    def __init__(self, service: Service, event: str, handler: EventHandler, **options: Any) -> None:
        super().__init__(service.url, f"{service.prefix}.{event}", self._unused, group=f"{service.name}.{event}",
                         durable=True, **options)
        self.service = service
        self.event_handler = handler
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_lock = threading.Lock()
        self.emitted = 0
        self.duplicates = 0

    @staticmethod
    def _unused(message: Message) -> None:  # pragma: no cover - _invoke replaces it
        raise AssertionError("handled by _invoke")

    def _invoke(self, bus: Bus, message: Message) -> None:
        event = Event.from_message(message)
        with self._seen_lock:
            if event.id in self._seen:
                self.duplicates += 1
                log.info("%s skipped event %s (%s): handled already", self.group, event.id, event.name)
                return
        ctx = Context(self.service.name, event)
        self.event_handler(event, ctx)
        for name, emitted in ctx.emitted:
            bus.publish(f"{self.service.prefix}.{name}", emitted)
        with self._seen_lock:
            self.emitted += len(ctx.emitted)
            self._seen[event.id] = None
            if len(self._seen) > REMEMBERED:
                self._seen.popitem(last=False)


class Service:
    """A service of a choreography: handlers for the events it cares about, each a durable subscription group.

    Parameters
    ----------
    url : str
        The bus: ``memory://name`` (services as threads of one process) or the embedded broker.
    name : str
        The service's name: its groups are ``<name>.<EventName>``, and it is the ``source`` of what it emits.
    prefix : str
        Topic prefix of events (``events.OrderPlaced``); every service of a flow must use the same.
    start : {"latest", "earliest"}
        Where a handler's group starts the first time the service runs: "earliest" also handles the events
        the broker still retains from before (a new service catching up on history).
    workers : int
        Threads per handler (several: events of one type are handled concurrently, their order is lost).
    prefetch, retry, connect_options
        As for :class:`ringbus.patterns.pubsub.Subscriber`. A handler that raises is retried with backoff;
        after 5 attempts the event goes to ``@<name>.<EventName>.dlq``.

    Notes
    -----
    Delivery is at least once. Emitted events keep their ids across redeliveries and a handler skips ids
    it handled recently (in this process); handlers with side effects outside the bus should still be
    idempotent (see :mod:`ringbus.patterns.idempotency`).
    """

    def __init__(self, url: str, name: str, *, prefix: str = PREFIX, start: Start = "latest", workers: int = 1,
                 prefetch: int = 64, retry: RetryPolicy | None = None,
                 connect_options: Mapping[str, Any] | None = None) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str such as 'memory://shop' or 'tcp://127.0.0.1:5555', not "
                            f"{type(url).__name__}")
        check_name("service", name)
        check_topic(prefix)
        self.url = url
        self.name = name
        self.prefix = prefix
        self._options: dict[str, Any] = {"start": start, "workers": workers, "prefetch": prefetch, "retry": retry,
                         "connect_options": connect_options}
        self._handlers: dict[str, EventHandler] = {}
        self._subscribers: list[_HandlerSubscriber] = []
        self._owner = threading.get_ident()
        self._bus: Bus | None = None
        self.origin_emitted = 0

    def on(self, event: str) -> Callable[[EventHandler], EventHandler]:
        """Decorator: ``handler(event, ctx)`` runs for every ``event`` published by any service."""
        _check_event_name(event)
        if event in self._handlers:
            raise ValueError(f"service {self.name!r} already has a handler for {event!r}")
        if self._subscribers:
            raise RuntimeError(f"service {self.name!r} is running: add handlers before start()")

        def register(handler: EventHandler) -> EventHandler:
            if not callable(handler):
                raise TypeError(f"handler must be callable, not {type(handler).__name__}")
            self._handlers[event] = handler
            return handler

        return register

    # -- lifetime -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Service:
        """Attach every handler's group; return once all are attached (events published from now on wait for us)."""
        if self._subscribers:
            raise RuntimeError(f"service {self.name!r} was started already")
        try:
            for event, handler in self._handlers.items():
                subscriber = _HandlerSubscriber(self, event, handler, **self._options)
                self._subscribers.append(subscriber)
                subscriber.start(timeout)
        except BaseException:
            self.stop(1.0)
            raise
        log.info("service %r handles %s", self.name, ", ".join(self._handlers) or "nothing")
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop every handler (finishing events in hand); True if all stopped within ``timeout`` seconds."""
        stopped = all([subscriber.stop(timeout) for subscriber in self._subscribers])
        if self._bus is not None:
            self._bus.close()
            self._bus = None
        return stopped

    def __enter__(self) -> Service:
        return self.start() if not self._subscribers else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting a flow ------------------------------------------------------------------------------------------
    def emit(self, name: str, data: Any = None, *, correlation_id: str | None = None) -> Event:
        """Emit the first event of a flow (from the thread that made this Service); return it.

        Its correlation id is ``correlation_id`` or, by default, its own id; it has no cause.
        """
        if threading.get_ident() != self._owner:
            raise RuntimeError(f"Service.emit belongs to the thread that made service {self.name!r}; handlers "
                               "emit with ctx.emit")
        _check_event_name(name)
        if correlation_id is not None and not isinstance(correlation_id, str):
            raise TypeError(f"correlation_id must be a str or None, not {type(correlation_id).__name__}")
        if self._bus is None:
            self._bus = connect(self.url, **(self._options["connect_options"] or {}))
        event_id = new_id()
        message = _event_message(name, data, event_id=event_id, correlation_id=correlation_id or event_id,
                                 causation_id=None, source=self.name)
        self._bus.publish(f"{self.prefix}.{name}", message)
        self.origin_emitted += 1
        return Event.from_message(message)

    def stats(self) -> ServiceStats:
        """Counts summed over this service's handlers."""
        parts = [subscriber.stats() for subscriber in self._subscribers]
        return ServiceStats(
            processed=sum(p.processed for p in parts), failed=sum(p.failed for p in parts),
            retried=sum(p.retried for p in parts), dead_lettered=sum(p.dead_lettered for p in parts),
            in_flight=sum(p.in_flight for p in parts), rate=sum(p.rate for p in parts),
            emitted=self.origin_emitted + sum(s.emitted for s in self._subscribers),
            duplicates=sum(s.duplicates for s in self._subscribers))


# --- the event log --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventLogStats(PatternStats):
    """:class:`PatternStats` of the log's subscriber, plus what it stored."""

    stored: int  # events in the log now
    duplicates: int  # events received again (a redelivery, a re-emit) and not stored twice


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id TEXT,
    source TEXT,
    timestamp REAL NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_flow ON events (correlation_id, seq);
CREATE INDEX IF NOT EXISTS events_by_name ON events (name);
"""


class EventLog:
    """Every event of a choreography in SQLite, queried by flow: ``log.flow(correlation_id) -> list[Event]``.

    A durable subscription group (``group``, default ``event-log``) on ``<prefix>.#``: a log that was down
    catches up, and a new one starts from the earliest event the broker retains. Each event is committed
    before it is acked (WAL, synchronous=NORMAL: an event survives a crash of this process), and stored once
    by id, so redeliveries and re-emits do not appear twice.

    Parameters
    ----------
    url : str
        The bus.
    data_dir : path
        Where the database lives: ``<data_dir>/<group>.sqlite3`` (created if missing).
    prefix, group, start, connect_options
        The events' topic prefix, the log's group name, where a new group starts, options of ``connect``.
    """

    def __init__(self, url: str, data_dir: str | os.PathLike[str], *, prefix: str = PREFIX,
                 group: str = "event-log", start: Start = "earliest",
                 connect_options: Mapping[str, Any] | None = None) -> None:
        check_topic(prefix)
        check_name("event log group", group)
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{group}.sqlite3"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.duplicates = 0
        self._subscriber = Subscriber(url, f"{prefix}.#", self._record, group=group, durable=True, start=start,
                                      connect_options=connect_options)

    def _record(self, message: Message) -> None:
        headers = message.headers
        name, correlation = headers.get(EVENT_HEADER), headers.get(CORRELATION_HEADER)
        if not isinstance(name, str) or not isinstance(correlation, str):
            log.warning("event log skipped message %s: not an event (no %r / %r header)", message.id, EVENT_HEADER,
                        CORRELATION_HEADER)
            return
        causation, source = headers.get(CAUSATION_HEADER), headers.get(SOURCE_HEADER)
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO events (id, name, correlation_id, causation_id, source, timestamp, "
                "content_type, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (message.id, name, correlation, causation, source, float(message.timestamp), message.content_type,
                 bytes(message.body)))
            if cursor.rowcount == 0:
                self.duplicates += 1

    # -- lifetime -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> EventLog:
        """Attach the log's group and start storing; return once attached."""
        self._subscriber.start(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop storing (the group keeps collecting events for the next start); True if stopped in time."""
        return self._subscriber.stop(timeout)

    def close(self) -> None:
        """Stop and close the database."""
        self.stop()
        with self._lock:
            self._db.close()

    def __enter__(self) -> EventLog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries --------------------------------------------------------------------------------------------------
    def _select(self, where: str, args: tuple[Any, ...]) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, id, correlation_id, causation_id, source, timestamp, content_type, body FROM events "
                f"{where}", args).fetchall()
        return [Event(name, Message(body, content_type=content_type).value(), event_id, correlation, causation,
                      source, timestamp)
                for name, event_id, correlation, causation, source, timestamp, content_type, body in rows]

    def flow(self, correlation_id: str) -> list[Event]:
        """Every event of one business flow, in the order the log received them (causes before effects)."""
        return self._select("WHERE correlation_id = ? ORDER BY seq", (correlation_id,))

    def events(self, name: str | None = None) -> list[Event]:
        """Every stored event (of one name), in the order received."""
        if name is None:
            return self._select("ORDER BY seq", ())
        return self._select("WHERE name = ? ORDER BY seq", (name,))

    def count(self, *names: str) -> int:
        """How many events are stored (of these names, if any are given)."""
        with self._lock:
            if not names:
                return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            marks = ", ".join("?" * len(names))
            return int(self._db.execute(f"SELECT COUNT(*) FROM events WHERE name IN ({marks})", names).fetchone()[0])

    def correlation_ids(self) -> list[str]:
        """Every flow the log has seen, in the order their first event arrived."""
        with self._lock:
            rows = self._db.execute("SELECT correlation_id FROM events GROUP BY correlation_id ORDER BY MIN(seq)")
            return [row[0] for row in rows.fetchall()]

    def stats(self) -> EventLogStats:
        base = self._subscriber.stats()
        return EventLogStats(base.processed, base.failed, base.retried, base.dead_lettered, base.in_flight, base.rate,
                             stored=self.count(), duplicates=self.duplicates, latency_ms=base.latency_ms)
