"""``amqp://`` and ``amqps://``: the Bus on RabbitMQ (3.10+), with pika.

Mapping (details and deviations in docs/backends.md, "RabbitMQ"):

- A ringbus queue is a **classic** queue (durable unless ``durable=False``) with ``x-max-priority`` 10: quorum
  queues of RabbitMQ 3.10 have no priorities, and the contract needs them. Messages are persistent.
- ``send`` publishes with **publisher confirms** and ``mandatory`` (an unroutable send is ``NotFound``);
  ``max_length`` is ``x-max-length`` with ``x-overflow`` ``reject-publish`` (a nacked confirm is ``Full``) or
  ``drop-head`` (dead-lettered by RabbitMQ through ``x-dead-letter-exchange``).
- Attempts, visibility timeouts, ``max_attempts`` and dead letters are kept by the client: a delivered message is
  leased for ``visibility_timeout`` by this Bus's I/O thread; a nack, or a lease that runs out, republishes the
  message with its attempt count + 1 (or to the dead-letter queue with the ringbus headers) and then acks the
  delivery. A message RabbitMQ itself requeued (its consumer's connection went away) counts one more attempt from
  the ``redelivered`` flag. Dead letters made by RabbitMQ (ttl, ``drop-head``) carry ``x-death``, which is
  translated into ``ringbus-dead-reason`` / ``ringbus-dead-from`` when they are received.
- ``delay`` (no plugin): a queue per (target, delay) with ``x-message-ttl`` that dead-letters into the target.
- ``ttl``: checked by the client at delivery (expired -> dead letter "expired"), and set as the message's
  ``expiration`` (plus ``TTL_GRACE``) so RabbitMQ also expires what nobody reads.
- Topics: one topic exchange per namespace; ringbus patterns are AMQP binding keys unchanged. Durable groups are
  queues ``@<group>`` bound to it; ephemeral subscriptions are exclusive auto-delete queues.
- Request/reply: a service queue per service and direct reply-to (``amq.rabbitmq.reply-to``).
- ringbus options RabbitMQ cannot hold or compare (``max_attempts``, ``visibility_timeout``, ``ttl``, ...) live
  in a catalog: a stream queue ``<prefix>ringbus.catalog`` of declarations, read by every Bus (first one wins).

Unsupported: ``ordered_by_key``, ``dedup`` (``send(dedup_id=)``) and ``start="earliest"`` (see
``unsupported_features`` and the reasons in their errors).

One I/O thread per Bus owns the pika connection; every call hands its work to it, so messages may be settled
from any thread and leases run out while the owner thread is busy elsewhere.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from ringbus.backends._common import (
    NO_SETTLE,
    Inbox,
    as_message,
    check_prefetch,
    check_subscription,
    reply_message,
)
from ringbus.bus import (
    TOPIC_HEADER,
    Bus,
    Handler,
    Overflow,
    QueueOptions,
    QueueStats,
    Start,
    Subscription,
    check_name,
    check_seconds,
    check_topic,
)
from ringbus.errors import Closed, Empty, Full, NotFound, PeerGone, RingbusError, Unsupported
from ringbus.message import HeaderValue, Message, new_id

try:
    import pika
    import pika.exceptions as pika_errors
except ImportError:  # pragma: no cover - only without the optional dependency
    pika = None

__all__ = ["AmqpBus"]

log = logging.getLogger("ringbus.backends.amqp")
T = TypeVar("T")

PRIORITY_LEVELS = 10  # x-max-priority: priorities above order as 10, below 0 as 0 (the message keeps its own)
TTL_GRACE = 1.0  # seconds RabbitMQ waits past a message's ttl before it expires it itself
SLICE = 0.05  # seconds the I/O thread waits for the socket before it looks at leases
SUBSCRIBER_BUFFER = 10_000
DELAY_KEEP_MS = 60_000  # a delay queue outlives its delay by this long unused (x-expires)
SERVICE_KEEP_MS = 60_000  # a service queue without servers or callers goes after this long
CATALOG_WAIT = 10.0
CLOSE_POLL = 0.002  # seconds between looks at a closing channel (nothing else ends that wait early)
DEAD_REASON = "ringbus-dead-reason"
DEAD_FROM = "ringbus-dead-from"

_H_KEY = "ringbus-amqp-key"
_H_PRIORITY = "ringbus-amqp-priority"
_H_ATTEMPTS = "ringbus-amqp-attempts"
_H_TS = "ringbus-amqp-ts"
_H_META = "ringbus-amqp-meta"
_H_EXPIRES = "ringbus-amqp-expires"
_H_CALL = "ringbus-amqp-call"
_H_ERROR = "ringbus-amqp-error"
_H_FLOATS = "ringbus-amqp-floats"  # pika cannot put a float in a field table: float headers travel here, as JSON
_INTERNAL = (_H_KEY, _H_PRIORITY, _H_ATTEMPTS, _H_TS, _H_META, _H_EXPIRES, _H_CALL, _H_ERROR, _H_FLOATS)
_RABBIT = ("x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange")
_DEATH_REASONS = {"expired": "expired", "maxlen": "overflow", "rejected": "rejected", "delivery_limit": "max_attempts"}
_DELAY = "~delay."
_OPTION_OF_ARGUMENT = {
    "durable": "durable", "x-max-length": "max_length", "x-overflow": "overflow",
    "x-dead-letter-exchange": "dead_letter", "x-dead-letter-routing-key": "dead_letter",
    "x-max-priority": "priority (ringbus queues have x-max-priority 10)",
}
_REPLY_TO = "amq.rabbitmq.reply-to"
_DEFAULTS = asdict(QueueOptions())
_json = msgspec.json.encode
_unjson = msgspec.json.decode

UNSUPPORTED = {
    "ordered_by_key": "ordered_by_key: RabbitMQ has no message groups (at most one unsettled message per key); "
                      "a consistent-hash exchange orders per key only with one consumer per shard queue",
    "dedup": "dedup: RabbitMQ keeps no message-id window, and a window in one client would miss the repeats "
             "sent by others",
    "replay": "replay (start='earliest'): a classic queue bound to the topic exchange only sees what is "
              "published after it exists; RabbitMQ streams could retain publications, not used here yet",
}


# -- process-wide state: counts for queue_stats and the catalog cache ---------------------------------------------
class _Counts:
    __slots__ = ("sent", "acked", "redelivered", "dead_lettered", "expired", "in_flight", "delay_queues",
                 "samples")

    def __init__(self) -> None:
        self.sent = self.acked = self.redelivered = self.dead_lettered = self.expired = self.in_flight = 0
        self.delay_queues: set[str] = set()
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=64)


_counts: dict[tuple[Any, ...], _Counts] = {}
_counts_lock = threading.Lock()


class _Catalog:
    """What this process has read of one namespace's catalog stream: the first declaration of each name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: dict[str, dict[str, Any]] = {}
        self.tokens: set[str] = set()
        self.offset = 0
        self.served = False  # this process saw RabbitMQ take a publication into the stream


_CATALOG_ARGUMENTS = {"x-queue-type": "stream"}


_catalogs: dict[tuple[Any, ...], _Catalog] = {}
_made: dict[tuple[Any, ...], set[str]] = {}  # service queues this process declared, per namespace (to drop them)
_catalogs_lock = threading.Lock()


def _catalog_served(params: Any, queue: str, catalog: _Catalog) -> None:
    """Make sure the catalog stream exists and RabbitMQ serves it, before a Bus's own connection uses it.

    Connections that declare a new stream at once race in RabbitMQ 3.10: one declare creates it, the others return
    before it runs, and their first publication kills their connection (541 INTERNAL_ERROR, or 506 "Stream not
    found"). A connection of its own takes that risk here: it declares the stream and publishes a marker with a
    confirm, on a new connection each time, until that works. Once per process and namespace.
    """
    with catalog.lock:
        if catalog.served:
            return
        deadline = time.monotonic() + CATALOG_WAIT
        while True:
            try:
                connection = pika.BlockingConnection(params)
            except pika_errors.AMQPError as exc:
                raise PeerGone(f"cannot connect to RabbitMQ at {params.host}:{params.port}: {exc!r}") from None
            try:
                channel = connection.channel()
                channel.confirm_delivery()
                channel.queue_declare(queue, durable=True, arguments=_CATALOG_ARGUMENTS)
                channel.basic_publish("", queue, _json({"marker": True}), pika.BasicProperties(delivery_mode=2),
                                      mandatory=True)
                catalog.served = True
                return
            except (pika_errors.AMQPConnectionError, pika_errors.AMQPChannelError) as exc:
                if time.monotonic() > deadline:
                    raise PeerGone(f"RabbitMQ did not serve the catalog stream {queue!r} within {CATALOG_WAIT} s: "
                                   f"{exc!r}") from None
                log.debug("the catalog stream %r is not served yet (%r); trying again", queue, exc)
                time.sleep(SLICE)
            finally:
                if connection.is_open:
                    connection.close()


def _unsupported(feature: str) -> Unsupported:
    return Unsupported(f"the amqp:// backend does not support {UNSUPPORTED[feature]}", feature=feature)


def _wake() -> None:
    """Handed to pika from another thread: it ends the I/O thread's wait, which then runs the calls handed over."""


class _Io(threading.Thread):
    """Owns the pika connection: runs the calls handed to it, dispatches deliveries, expires leases."""

    def __init__(self, params: Any, name: str) -> None:
        super().__init__(name=name, daemon=True)
        try:
            self.conn = pika.BlockingConnection(params)
        except pika_errors.AMQPError as exc:
            raise PeerGone(f"cannot connect to RabbitMQ at {params.host}:{params.port}: {exc!r}") from None
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self._probe: Any = None
        self.stopping = False
        self.dead = False
        self.error: BaseException | None = None
        self._pending: set[Future[Any]] = set()
        self._calls: deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self.ticks: list[Callable[[], None]] = []

    def probe(self) -> Any:
        """A channel for calls that may fail with a channel error (passive declares, declarations)."""
        if self._probe is None or not self._probe.is_open:
            self._probe = self.conn.channel()
        return self._probe

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the I/O thread; its result, or its exception raised here."""
        if threading.get_ident() == self.ident:
            return fn(*args)
        future: Future[T] = Future()
        with self._lock:
            if self.dead:
                raise PeerGone(f"the connection to RabbitMQ is gone ({self.error!r})")
            self._pending.add(future)
            self._calls.append((future, fn, args))
        try:
            try:
                self.conn.add_callback_threadsafe(_wake)
            except pika_errors.AMQPError as exc:  # closed under us: run() fails the pending calls as it ends
                log.debug("could not wake the I/O thread: %r", exc)
            return future.result()
        finally:
            with self._lock:
                self._pending.discard(future)

    def _run_calls(self) -> None:
        """The calls handed over so far, each to its end. They run here, between two process_data_events, never
        inside pika's dispatch of a callback: there a nested process_data_events dispatches nothing, so a channel
        call that waits for deliveries (the catalog reader) would only get them at its inactivity timeout, and
        deliveries pika holds would not reach their inboxes before a cancel."""
        while True:
            with self._lock:
                if not self._calls:
                    return
                future, fn, args = self._calls.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)

    def run(self) -> None:
        try:
            while not self.stopping:
                self.conn.process_data_events(time_limit=SLICE)
                self._run_calls()
                for tick in self.ticks:
                    tick()
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting call
            if not self.stopping:
                log.error("ringbus amqp connection lost: %r", exc)
            self.error = exc
        finally:
            with self._lock:
                self.dead = True
                pending = list(self._pending)
            for future in pending:
                if not future.done():
                    future.set_exception(PeerGone(f"the connection to RabbitMQ is gone ({self.error!r})"))
            try:
                if self.conn.is_open:
                    self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def stop(self) -> None:
        def halt() -> None:
            self.stopping = True

        try:
            self.call(halt)
        except (PeerGone, Closed):
            pass
        self.join(5.0)


class _Delivery:
    """The settle handle of one delivered message."""

    __slots__ = ("bus", "queue", "tag", "message", "record", "state", "channel", "expires")

    def __init__(self, bus: AmqpBus, queue: str, tag: int, message: Message, record: dict[str, Any],
                 channel: Any, expires: float | None) -> None:
        self.expires = expires
        self.bus = bus
        self.queue = queue
        self.tag = tag
        self.message = message
        self.record = record
        self.state = "open"
        self.channel = channel

    def _take(self, action: str) -> None:
        bus = self.bus
        with bus._lock:
            if self.state == "open" and not bus._closed:
                self.state = "settled"
                return
            state = self.state
        if bus._closed:
            raise Closed(f"cannot {action} a message of queue {self.queue!r}: its bus {bus.url!r} is closed "
                         "(RabbitMQ delivers it again)")
        if state == "expired":
            raise RingbusError(f"cannot {action} message {self.message.id!r} of queue {self.queue!r}: its "
                               "visibility timeout ran out and it went back to the queue")
        raise RingbusError(f"cannot {action} message {self.message.id!r} of queue {self.queue!r}: already settled")

    def ack(self, message: Message) -> None:
        self._take("ack")
        self.bus._io.call(self.bus._do_ack, self)

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self._take("nack")
        if requeue:
            self.bus._io.call(self.bus._do_requeue, self, delay)
        else:
            self.bus._io.call(self.bus._do_dead, self, "nacked")

    def reject(self, message: Message) -> None:
        self._take("reject")
        self.bus._io.call(self.bus._do_dead, self, "rejected")


class _AmqpSubscription(Subscription):
    def __init__(self, bus: AmqpBus, pattern: str, group: str | None, durable: bool) -> None:
        self.pattern = pattern
        self.group = group
        self.durable = durable
        self._bus = bus
        self._closed = False
        self._inbox: Inbox | None = None
        self._tag: str | None = None
        if durable:
            assert group is not None
            self._queue = f"@{group}"
            bus._io.call(bus._declare_group, self._queue, pattern)
        else:
            self._inbox = Inbox(SUBSCRIBER_BUFFER)
            self._tag = bus._io.call(bus._subscribe_ephemeral, pattern, group, self._inbox)

    def receive(self, timeout: float | None = None) -> Message | None:
        if self._closed:
            raise Closed("subscription is closed")
        if self._inbox is None:
            return self._bus.receive(self._queue, timeout)
        timeout = check_seconds("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            item = self._inbox.get(deadline)
        except Closed:
            raise Closed("subscription is closed") from None
        if item is None:
            return None
        _, properties, body = item
        message, _, _ = self._bus._decode(properties, body, False)
        message._settle = NO_SETTLE
        return message

    @property
    def dropped(self) -> int:
        return 0 if self._inbox is None else self._inbox.dropped

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inbox is not None:
            self._inbox.close()
            bus = self._bus
            if not bus._closed and self._tag is not None:
                try:
                    bus._io.call(bus._cancel, self._tag, None)
                except (PeerGone, Closed):
                    pass


class _Call:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Message | None = None


class AmqpBus(Bus):
    """A Bus on RabbitMQ; see the module docstring.

    Parameters
    ----------
    url : str
        ``amqp://user:password@host:port/vhost`` (pika's URL parameters allowed in the query), plus
        ``prefix=...`` in the query: a prefix for every RabbitMQ name this Bus uses (queues, exchange, catalog),
        so several ringbus namespaces can share one vhost.
    prefix : str
        The same as the query parameter (the keyword wins).
    """

    unsupported_features: frozenset[str] = frozenset(UNSUPPORTED)
    # A ttl ends a message's wait only where RabbitMQ looks - the head of its queue - and at delivery: a message
    # that higher priorities keep from the head waits past its ttl (so the priority pattern's aging refuses it).
    ttl_expires_waiting: bool = False

    def __init__(self, url: str, *, prefix: str | None = None) -> None:
        if pika is None:  # pragma: no cover
            raise Unsupported("the amqp:// backend needs pika: pip install 'pika>=1.3'")
        self.url = url
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        ours = {k: v for k, v in query if k == "prefix"}
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        self._prefix = prefix if prefix is not None else ours.get("prefix", "")
        if not isinstance(self._prefix, str) or len(self._prefix) > 40:
            raise ValueError(f"prefix must be a str of at most 40 characters, got {self._prefix!r}")
        params = pika.URLParameters(urlunsplit((parts.scheme, parts.netloc, parts.path, rest, "")))
        self._server = (params.host, params.port, params.virtual_host, self._prefix)
        self._exchange = f"{self._prefix}ringbus.topics"
        self._catalog_queue = f"{self._prefix}ringbus.catalog"
        with _catalogs_lock:
            self._catalog = _catalogs.setdefault(self._server, _Catalog())
        self._closed = False
        self._lock = threading.Lock()
        self._leases: list[tuple[float, int, _Delivery]] = []
        self._new_leases: deque[tuple[float, _Delivery]] = deque()
        self._seq = itertools.count()
        self._open: set[_Delivery] = set()
        self._inboxes: dict[Inbox, str | None] = {}  # consumers' inboxes -> their ringbus queue (None: service)
        self._calls: dict[str, _Call] = {}
        self._reply_consumer: str | None = None
        self._declared: set[str] = set()
        self._subscriptions: list[_AmqpSubscription] = []
        _catalog_served(params, self._catalog_queue, self._catalog)
        self._io = _Io(params, f"ringbus-amqp-{new_id()[:8]}")
        self._io.ticks.append(self._expire_leases)
        self._io.start()
        self._io.call(self._setup)

    # -- names and bookkeeping ----------------------------------------------------------------------------------
    def _q(self, name: str) -> str:
        return self._prefix + name

    def _unq(self, name: str) -> str:
        return name[len(self._prefix):] if name.startswith(self._prefix) else name

    def _counts(self, queue: str) -> _Counts:
        key = (self._server, queue)
        counts = _counts.get(key)
        if counts is None:
            with _counts_lock:
                counts = _counts.setdefault(key, _Counts())
        return counts

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"bus {self.url!r} is closed")

    def _setup(self) -> None:
        self._io.ch.queue_declare(self._catalog_queue, durable=True, arguments=_CATALOG_ARGUMENTS)

    # -- encoding -----------------------------------------------------------------------------------------------
    def _properties(self, message: Message, attempts: int, expires: float | None,
                    expiration_ms: int | None = None, extra: dict[str, Any] | None = None) -> Any:
        headers: dict[str, Any] = {}
        floats = {}
        for name, value in message.headers.items():
            if isinstance(value, float):
                floats[name] = value
            else:
                headers[name] = value
        if floats:
            headers[_H_FLOATS] = _json(floats).decode()
        headers[_H_ATTEMPTS] = attempts
        headers[_H_PRIORITY] = message.priority
        headers[_H_TS] = repr(float(message.timestamp))
        if message.key is not None:
            headers[_H_KEY] = message.key
        if message.meta:
            headers[_H_META] = _json(message.meta).decode()
        if expires is not None:
            headers[_H_EXPIRES] = repr(float(expires))
        if extra:
            headers.update(extra)
        return pika.BasicProperties(
            message_id=message.id, headers=headers, delivery_mode=2,
            priority=min(max(message.priority, 0), PRIORITY_LEVELS), content_type=message.content_type,
            correlation_id=message.correlation_id, reply_to=message.reply_to,
            expiration=None if expiration_ms is None else str(max(expiration_ms, 0)),
            timestamp=int(message.timestamp))

    def _decode(self, properties: Any, body: bytes, redelivered: bool) -> tuple[Message, float | None, dict[str, Any]]:
        """The Message in a delivery, its expiry (wall time or None), and the internal headers."""
        raw = dict(properties.headers or {})
        internal = {name: raw.pop(name) for name in _INTERNAL if name in raw}
        deaths = raw.pop("x-death", None)
        for name in _RABBIT:
            raw.pop(name, None)
        headers: dict[str, HeaderValue] = {}
        for name, value in raw.items():
            if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
                headers[name] = value
            elif isinstance(value, int):
                headers[name] = int(value)
            elif isinstance(value, bytes):
                headers[name] = value.decode("utf-8", "replace")
            else:
                headers[name] = str(value)
        floats = internal.get(_H_FLOATS)
        if floats:
            headers.update(_unjson(floats))
        if deaths:
            for death in deaths:  # most recent first; our delay queues are no death
                queue = self._unq(str(death.get("queue", "")))
                if queue.startswith(_DELAY):
                    continue
                reason = str(death.get("reason", ""))
                headers[DEAD_REASON] = _DEATH_REASONS.get(reason, reason)
                headers[DEAD_FROM] = queue
                internal.pop(_H_EXPIRES, None)  # the ttl was the dead queue's; a dead letter starts afresh
                break
        attempts = int(internal.get(_H_ATTEMPTS, 0)) + (1 if redelivered else 0)
        meta = internal.get(_H_META)
        key = internal.get(_H_KEY)
        message = Message(
            body, id=properties.message_id or new_id(), key=None if key is None else str(key),
            priority=int(internal.get(_H_PRIORITY, properties.priority or 0)), headers=headers,
            timestamp=float(internal.get(_H_TS, properties.timestamp or time.time())), attempts=attempts,
            reply_to=properties.reply_to, correlation_id=properties.correlation_id,
            content_type=properties.content_type or "application/octet-stream",
            meta={} if not meta else _unjson(meta))
        expires = internal.get(_H_EXPIRES)
        return message, None if expires is None else float(expires), internal

    # -- catalog (I/O thread) -----------------------------------------------------------------------------------
    def _catalog_publish(self, record: dict[str, Any]) -> str:
        token = new_id()
        record = {**record, "token": token}
        self._io.ch.basic_publish("", self._catalog_queue, _json(record),
                                  pika.BasicProperties(delivery_mode=2), mandatory=True)
        return token

    def _catalog_sync(self, record: dict[str, Any] | None = None) -> None:
        """Append ``record`` (or a marker) to the catalog and read the catalog up to it."""
        token = self._catalog_publish(record or {"marker": True})
        catalog = self._catalog
        with catalog.lock:
            if token in catalog.tokens:
                return
            channel = self._io.conn.channel()
            try:
                channel.basic_qos(prefetch_count=1000)
                deadline = time.monotonic() + CATALOG_WAIT
                for method, properties, body in channel.consume(
                        self._catalog_queue, arguments={"x-stream-offset": catalog.offset}, inactivity_timeout=0.5):
                    if method is not None:
                        offset = int((properties.headers or {}).get("x-stream-offset", catalog.offset))
                        if offset >= catalog.offset:
                            catalog.offset = offset + 1
                            entry = _unjson(body)
                            catalog.tokens.add(entry.get("token", ""))
                            name = entry.get("name")
                            if name is not None and name not in catalog.records:
                                catalog.records[name] = entry
                        channel.basic_ack(method.delivery_tag)
                    if token in catalog.tokens:
                        break
                    if time.monotonic() > deadline:
                        raise PeerGone(f"the catalog {self._catalog_queue!r} did not reach this Bus's own record "
                                       f"within {CATALOG_WAIT} s")
            finally:
                self._close_stream_reader(channel)

    def _close_stream_reader(self, channel: Any) -> None:
        """Close a channel that consumed the catalog stream without settling what it still holds (I/O thread).

        pika's cancel and close reject every delivery it holds, or that arrives, for a manual-ack consumer, and
        RabbitMQ before 3.13 (rabbitmq-server#9644) answers a reject on a stream queue by closing the whole
        connection (540 NOT_IMPLEMENTED). The channel object under pika's BlockingChannel closes without those
        rejects (a closing channel drops late deliveries); a stream needs no settling.
        """
        if not channel.is_open:
            return
        channel._impl.close()
        deadline = time.monotonic() + CATALOG_WAIT
        while not channel.is_closed and time.monotonic() < deadline:
            self._io.conn.process_data_events(time_limit=CLOSE_POLL)

    def _record(self, name: str, sync: bool = True) -> dict[str, Any] | None:
        record = self._catalog.records.get(name)
        if record is None and sync:
            self._catalog_sync()
            record = self._catalog.records.get(name)
        return record

    def _options_of(self, name: str) -> dict[str, Any]:
        """The catalog record of queue ``name`` (I/O thread); NotFound if it was never declared."""
        record = self._record(name)
        if record is None:
            raise NotFound(f"queue {name!r} was not declared")
        return record

    def _queue_arguments(self, record: dict[str, Any]) -> dict[str, Any]:
        options = record["options"]
        arguments: dict[str, Any] = {"x-max-priority": PRIORITY_LEVELS}
        if options["max_length"] is not None:
            arguments["x-max-length"] = options["max_length"]
            arguments["x-overflow"] = "reject-publish" if options["overflow"] == "reject" else "drop-head"
        if record.get("dlq"):
            arguments["x-dead-letter-exchange"] = ""
            arguments["x-dead-letter-routing-key"] = self._q(record["dead_letter"])
        return arguments

    def _declare_rabbit(self, record: dict[str, Any]) -> None:
        name = record["name"]
        try:
            self._io.probe().queue_declare(self._q(name), durable=record["options"]["durable"],
                                           arguments=self._queue_arguments(record))
        except pika_errors.ChannelClosedByBroker as exc:
            if exc.reply_code == 406:
                found = re.search(r"inequivalent arg '([^']+)'", str(exc.reply_text))
                argument = found.group(1) if found else "?"
                option = _OPTION_OF_ARGUMENT.get(argument, argument)
                raise ValueError(f"queue {name!r} exists in RabbitMQ with other arguments than ringbus gives it: "
                                 f"{argument} (ringbus option {option}); {exc.reply_text}") from None
            raise

    def _declare(self, name: str, options: dict[str, Any], group_pattern: str | None = None) -> None:
        """declare_queue in the I/O thread: the catalog decides, then RabbitMQ gets the queue."""
        dead_letter = options["dead_letter"] or f"{name}.dlq"
        mine = {"name": name, "options": options, "dlq": True, "dead_letter": dead_letter, "pattern": group_pattern}
        record = self._record(name)
        if record is None:
            self._catalog_sync(mine)
            record = self._catalog.records[name]
        if record.get("side") and record["options"] == options and group_pattern is None:
            pass  # declaring a dead-letter queue created on the side, with its default options
        else:
            differ = sorted(k for k in options if record["options"].get(k) != options[k])
            if differ:
                raise ValueError(f"queue {name!r} exists with other options: " + ", ".join(
                    f"{k}={record['options'].get(k)!r} (not {options[k]!r})" for k in differ))
            if record.get("pattern") != group_pattern:
                raise ValueError(f"durable group {name[1:]!r} is bound to pattern {record.get('pattern')!r}, "
                                 f"not {group_pattern!r}")
        self._declare_rabbit(record)
        if record.get("dlq"):
            letters = record["dead_letter"]
            side = self._record(letters, sync=False)
            if side is None:
                self._catalog_sync({"name": letters, "options": {**_DEFAULTS, "durable": options["durable"]},
                                    "dlq": False, "side": True, "dead_letter": None, "pattern": None})
                side = self._catalog.records[letters]
            self._declare_rabbit(side)
        self._declared.add(name)

    # -- queues -------------------------------------------------------------------------------------------------
    def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                      overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                      visibility_timeout: float = 30.0, ordered_by_key: bool = False, ttl: float | None = None,
                      dedup_window: float = 300.0) -> None:
        self._check_open()
        check_name("queue", name)
        options = QueueOptions(durable=durable, max_length=max_length, overflow=overflow, dead_letter=dead_letter,
                               max_attempts=max_attempts, visibility_timeout=visibility_timeout,
                               ordered_by_key=ordered_by_key, ttl=ttl, dedup_window=dedup_window)
        if not isinstance(durable, bool):
            raise ValueError(f"durable must be a bool, got {durable!r}")
        if ordered_by_key:
            raise _unsupported("ordered_by_key")
        self._io.call(self._declare, name, _unjson(_json(asdict(options))))

    def send(self, queue: str, body: bytes | bytearray | memoryview | Message, *, key: str | None = None,
             priority: int | None = None, headers: dict[str, HeaderValue] | None = None,
             delay: float | None = None, ttl: float | None = None, dedup_id: str | None = None) -> str:
        self._check_open()
        message = as_message(body, key=key, priority=priority, headers=headers)
        delay = check_seconds("delay", delay)
        ttl = check_seconds("ttl", ttl, allow_zero=False)
        if dedup_id is not None:
            if not isinstance(dedup_id, str):
                raise TypeError(f"dedup_id must be a str or None, not {type(dedup_id).__name__}")
            raise _unsupported("dedup")
        self._io.call(self._send, queue, message, delay, ttl)
        return message.id

    def send_many(self, queue: str, bodies: Any) -> list[str]:
        self._check_open()
        messages = [as_message(body) for body in bodies]

        def send_all() -> None:
            for message in messages:
                self._send(queue, message, None, None)

        self._io.call(send_all)
        return [message.id for message in messages]

    def _publish(self, routing_key: str, properties: Any, body: Any, queue: str) -> None:
        try:
            self._io.ch.basic_publish("", routing_key, bytes(body), properties, mandatory=True)
        except pika_errors.UnroutableError:
            raise NotFound(f"queue {queue!r} was not declared (RabbitMQ has no queue {routing_key!r})") from None
        except pika_errors.NackError:
            raise Full(f"queue {queue!r} is full (max_length, overflow='reject'): RabbitMQ refused the "
                       "message") from None

    def _send(self, queue: str, message: Message, delay: float | None, ttl: float | None,
              attempts: int = 0) -> None:
        record = self._options_of(queue)
        if ttl is None:
            ttl = record["options"]["ttl"]
        expires = None if ttl is None else time.time() + (delay or 0.0) + ttl
        if delay:
            self._publish(self._delay_queue(queue, record, delay),
                          self._properties(message, attempts, expires), message.body, queue)
        else:
            expiration = None if ttl is None else int((ttl + TTL_GRACE) * 1000)
            self._publish(self._q(queue), self._properties(message, attempts, expires, expiration),
                          message.body, queue)
        if attempts == 0:
            counts = self._counts(queue)
            with _counts_lock:
                counts.sent += 1

    def _delay_queue(self, queue: str, record: dict[str, Any], delay: float) -> str:
        ms = max(1, round(delay * 1000))
        name = self._q(f"{_DELAY}{queue}.{ms}")
        self._io.probe().queue_declare(name, durable=record["options"]["durable"], arguments={
            "x-message-ttl": ms, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": self._q(queue),
            "x-expires": ms + DELAY_KEEP_MS})
        counts = self._counts(queue)
        with _counts_lock:
            counts.delay_queues.add(name)
        return name

    # -- deliveries ---------------------------------------------------------------------------------------------
    def _delivered(self, queue: str, change: int) -> None:
        """A delivery of ``queue`` came to this Bus (+1: in flight from here, prefetched ones too) or left it unsettled
        (-1: given back without being handed out)."""
        counts = self._counts(queue)
        with _counts_lock:
            counts.in_flight += change

    def _get(self, queue: str) -> Any:
        method, properties, body = self._io.ch.basic_get(self._q(queue), auto_ack=False)
        if method is None:
            return None
        self._delivered(queue, 1)
        return method, properties, body

    def _consume_start(self, queue: str, prefetch: int, inbox: Inbox, auto_ack: bool = False) -> str:
        channel = self._io.ch
        channel.basic_qos(prefetch_count=prefetch)
        owner = self._inboxes.get(inbox)  # the ringbus queue whose deliveries these are (None: a service's)

        def deliver(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            if owner is not None:
                self._delivered(owner, 1)
            inbox.put((method, properties, body))

        tag: str = channel.basic_consume(queue, deliver, auto_ack=auto_ack)  # pika is untyped: its consumer tag
        return tag

    def _cancel(self, tag: str, inbox: Inbox | None, queue: str | None = None) -> None:
        channel = self._io.ch
        if channel.is_open:
            if inbox is not None:
                # deliveries pika holds but has not dispatched: into the inbox, or basic_cancel nacks them
                # (RabbitMQ would count an attempt)
                self._io.conn.process_data_events(time_limit=0)
            channel.basic_cancel(tag)
            if inbox is not None:
                for method, properties, body in inbox.drain():  # delivered here, never handed out: back it goes
                    self._give_back(channel, method, properties, body, queue)

    def _give_back(self, channel: Any, method: Any, properties: Any, body: bytes, queue: str | None) -> None:
        """Put back a prefetched delivery nobody took. RabbitMQ's requeue keeps its place in the queue (a copy
        republished would go to the back and break the queue's order), at the price of ``redelivered``: it counts
        one attempt when it comes again (docs/backends.md)."""
        if queue is not None:
            self._delivered(queue, -1)
        channel.basic_nack(method.delivery_tag, requeue=True)

    def _stop_consuming(self, tag: str, inbox: Inbox, queue: str | None = None) -> None:
        """End a consumer of this Bus (from the owner thread); what it delivered but nobody took goes back (to
        ``queue`` without an attempt, when it is a queue consumer)."""
        self._inboxes.pop(inbox, None)
        if not self._closed:
            try:
                self._io.call(self._cancel, tag, inbox, queue)
            except (PeerGone, Closed):
                pass

    def _accept(self, queue: str, record: dict[str, Any], item: Any) -> Message | None:
        """A delivery becomes a leased message, or (expired, too many attempts) a dead letter and None."""
        method, properties, body = item
        message, expires, _ = self._decode(properties, body, method.redelivered)
        delivery = _Delivery(self, queue, method.delivery_tag, message, record, self._io.ch, expires)
        counts = self._counts(queue)  # in flight since it was delivered (_delivered)
        if expires is not None and expires <= time.time():
            delivery.state = "settled"
            self._io.call(self._do_dead, delivery, "expired")
            return None
        if message.attempts >= record["options"]["max_attempts"]:
            delivery.state = "settled"
            self._io.call(self._do_dead, delivery, "max_attempts")
            return None
        with self._lock:
            if self._closed:
                raise Closed(f"bus {self.url!r} is closed")
            self._open.add(delivery)
        if message.attempts:
            with _counts_lock:
                counts.redelivered += 1
        self._new_leases.append((time.monotonic() + record["options"]["visibility_timeout"], delivery))
        message._settle = delivery
        return message

    def _settled(self, delivery: _Delivery, **changes: int) -> None:
        counts = self._counts(delivery.queue)
        with _counts_lock:
            counts.in_flight -= 1
            for name, n in changes.items():
                setattr(counts, name, getattr(counts, name) + n)
        with self._lock:
            self._open.discard(delivery)

    def _do_ack(self, delivery: _Delivery) -> None:
        delivery.channel.basic_ack(delivery.tag)
        self._settled(delivery, acked=1)

    def _do_dead(self, delivery: _Delivery, reason: str) -> None:
        """Copy the message to its dead-letter queue with the ringbus headers, then ack it (I/O thread)."""
        record = delivery.record
        if record.get("dlq"):
            message = delivery.message
            headers = {**message.headers, DEAD_REASON: reason, DEAD_FROM: delivery.queue}
            letter = msgspec.structs.replace(message, headers=headers)
            try:
                self._publish(self._q(record["dead_letter"]),
                              self._properties(letter, message.attempts + 1, None), message.body, record["dead_letter"])
            except (NotFound, Full) as exc:
                log.warning("dropped a dead letter of queue %r: %s", delivery.queue, exc)
        delivery.channel.basic_ack(delivery.tag)
        self._settled(delivery, dead_lettered=1, expired=1 if reason == "expired" else 0)

    def _do_requeue(self, delivery: _Delivery, delay: float | None) -> None:
        message = delivery.message
        attempts = message.attempts + 1
        if attempts >= delivery.record["options"]["max_attempts"]:
            self._do_dead(delivery, "max_attempts")
            return
        try:
            self._requeue_publish(delivery, attempts, delay)
        except (NotFound, Full):  # cannot put it back ourselves: let RabbitMQ requeue it (redelivered)
            delivery.channel.basic_nack(delivery.tag, requeue=True)
            self._settled(delivery)
            return
        delivery.channel.basic_ack(delivery.tag)
        self._settled(delivery)

    def _requeue_publish(self, delivery: _Delivery, attempts: int, delay: float | None) -> None:
        message = delivery.message
        queue = delivery.queue
        expires = delivery.expires
        if delay:
            target = self._delay_queue(queue, delivery.record, delay)
            self._publish(target, self._properties(message, attempts, expires), message.body, queue)
        else:
            expiration = None if expires is None else int((expires - time.time() + TTL_GRACE) * 1000)
            self._publish(self._q(queue), self._properties(message, attempts, expires, expiration), message.body,
                          queue)

    def _expire_leases(self) -> None:
        """I/O thread, every turn: a delivery unsettled past its visibility timeout goes back to its queue."""
        heap = self._leases
        while self._new_leases:
            deadline, delivery = self._new_leases.popleft()
            heapq.heappush(heap, (deadline, next(self._seq), delivery))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, delivery = heapq.heappop(heap)
            with self._lock:
                if delivery.state != "open" or self._closed:
                    continue
                delivery.state = "expired"
            try:
                self._do_requeue(delivery, None)
            except Exception:  # noqa: BLE001 - the connection is going; RabbitMQ requeues it
                log.exception("could not return an expired delivery of queue %r", delivery.queue)

    def receive(self, queue: str, timeout: float | None = None) -> Message | None:
        self._check_open()
        timeout = check_seconds("timeout", timeout)
        record = self._io.call(self._options_of, queue)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            item = self._io.call(self._get, queue)
            if item is None:
                break
            message = self._accept(queue, record, item)
            if message is not None:
                return message
        if deadline is not None and deadline <= time.monotonic():
            return None
        inbox = Inbox()
        self._inboxes[inbox] = queue
        tag = self._io.call(self._consume_start, self._q(queue), 1, inbox)
        try:
            while True:
                item = inbox.get(deadline)
                if item is None:
                    return None
                message = self._accept(queue, record, item)
                if message is not None:
                    return message
        finally:
            self._stop_consuming(tag, inbox, queue)

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> Generator[Message, None, None]:
        self._check_open()
        check_prefetch(prefetch)
        timeout = check_seconds("timeout", timeout)
        record = self._io.call(self._options_of, queue)
        return self._consume(queue, record, prefetch, timeout)

    def _consume(self, queue: str, record: dict[str, Any], prefetch: int,
                 timeout: float | None) -> Generator[Message, None, None]:
        inbox = Inbox()
        self._inboxes[inbox] = queue
        tag = self._io.call(self._consume_start, self._q(queue), prefetch, inbox)
        try:
            while not self._closed:
                item = inbox.get(None if timeout is None else time.monotonic() + timeout)
                if item is None:
                    return
                message = self._accept(queue, record, item)
                if message is not None:
                    yield message
        except Closed:
            return
        finally:
            self._stop_consuming(tag, inbox, queue)

    def _stats(self, queue: str) -> tuple[int, int, int]:
        self._options_of(queue)
        probe = self._io.probe()
        try:
            declared = probe.queue_declare(self._q(queue), passive=True).method
        except pika_errors.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                raise NotFound(f"queue {queue!r} is in the catalog but not in RabbitMQ") from None
            raise
        delayed = 0
        counts = self._counts(queue)
        for name in list(counts.delay_queues):
            try:
                delayed += self._io.probe().queue_declare(name, passive=True).method.message_count
            except pika_errors.ChannelClosedByBroker:
                with _counts_lock:
                    counts.delay_queues.discard(name)
        return declared.message_count, delayed, declared.consumer_count

    def queue_stats(self, queue: str) -> QueueStats:
        self._check_open()
        ready, delayed, consumers = self._io.call(self._stats, queue)
        counts = self._counts(queue)
        with _counts_lock:
            now = time.monotonic()
            counts.samples.append((now, counts.sent, counts.acked))
            while len(counts.samples) > 2 and now - counts.samples[0][0] > 5.0:
                counts.samples.popleft()
            first = counts.samples[0]
            span = now - first[0]
            send_rate = (counts.sent - first[1]) / span if span > 0 else 0.0
            ack_rate = (counts.acked - first[2]) / span if span > 0 else 0.0
            return QueueStats(name=queue, depth=ready + delayed, ready=ready, delayed=delayed,
                              in_flight=max(counts.in_flight, 0), consumers=consumers, sent=counts.sent,
                              acked=counts.acked, redelivered=counts.redelivered,
                              dead_lettered=counts.dead_lettered, expired=counts.expired, deduplicated=0,
                              send_rate=send_rate, ack_rate=ack_rate)

    def queues(self) -> list[str]:
        self._check_open()

        def names() -> list[str]:
            self._catalog_sync()
            return [name for name in self._catalog.records if not name.startswith("@")]

        return self._io.call(names)

    # -- topics -------------------------------------------------------------------------------------------------
    def _ensure_exchange(self) -> None:
        if "\0exchange" not in self._declared:
            self._io.ch.exchange_declare(self._exchange, exchange_type="topic", durable=True)
            self._declared.add("\0exchange")

    def _publish_topic(self, topic: str, message: Message) -> None:
        self._ensure_exchange()
        message = msgspec.structs.replace(message, headers={**message.headers, TOPIC_HEADER: topic})
        self._io.ch.basic_publish(self._exchange, topic, bytes(message.body), self._properties(message, 0, None))

    def publish(self, topic: str, body: bytes | bytearray | memoryview | Message, *,
                headers: dict[str, HeaderValue] | None = None, key: str | None = None) -> str:
        self._check_open()
        check_topic(topic)
        message = as_message(body, key=key, headers=headers)
        self._io.call(self._publish_topic, topic, message)
        return message.id

    def publish_many(self, topic: str, bodies: Any) -> list[str]:
        self._check_open()
        check_topic(topic)
        messages = [as_message(body) for body in bodies]

        def publish_all() -> None:
            for message in messages:
                self._publish_topic(topic, message)

        self._io.call(publish_all)
        return [message.id for message in messages]

    def _declare_group(self, queue: str, pattern: str) -> None:
        self._ensure_exchange()
        self._declare(queue, dict(_DEFAULTS), group_pattern=pattern)
        self._io.ch.queue_bind(self._q(queue), self._exchange, routing_key=pattern)

    def _subscribe_ephemeral(self, pattern: str, group: str | None, inbox: Inbox) -> str:
        self._ensure_exchange()
        channel = self._io.ch
        if group is None:
            name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        else:
            digest = hashlib.sha1(pattern.encode()).hexdigest()[:16]
            name = channel.queue_declare(self._q(f"~group.{group}.{digest}"), auto_delete=True).method.queue
        channel.queue_bind(name, self._exchange, routing_key=pattern)
        return self._consume_start(name, 0, inbox, auto_ack=True)

    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscription:
        self._check_open()
        check_subscription(pattern, group, durable, start)
        if start == "earliest":
            raise _unsupported("replay")
        subscription = _AmqpSubscription(self, pattern, group, durable)
        self._subscriptions.append(subscription)
        return subscription

    # -- services -----------------------------------------------------------------------------------------------
    def _service_queue(self, service: str) -> str:
        name = self._q(f"ringbus.service.{service}")
        if name not in self._declared:
            self._io.probe().queue_declare(name, durable=False, arguments={"x-expires": SERVICE_KEEP_MS})
            self._declared.add(name)
            with _counts_lock:
                _made.setdefault(self._server, set()).add(name)
        return name

    def _on_reply(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        call_id = (properties.headers or {}).get(_H_CALL)
        call = self._calls.get(str(call_id))
        if call is None:
            return  # the late reply to a request given up on
        call.reply, _, internal = self._decode(properties, body, False)
        if _H_ERROR in internal:
            call.reply.headers[_H_ERROR] = str(internal[_H_ERROR])
        call.event.set()

    def _send_request(self, service: str, message: Message, timeout: float | None) -> None:
        channel = self._io.ch
        if self._reply_consumer is None:
            self._reply_consumer = channel.basic_consume(_REPLY_TO, self._on_reply, auto_ack=True)
        properties = self._properties(message, 0, None, None if timeout is None else int(timeout * 1000) + 1,
                                      extra={_H_CALL: message.id})
        properties.reply_to = _REPLY_TO
        for retry in (True, False):
            name = self._service_queue(service)
            try:
                channel.basic_publish("", name, bytes(message.body), properties, mandatory=True)
                return
            except pika_errors.UnroutableError:  # the service queue expired since we declared it
                self._declared.discard(name)
                if not retry:
                    raise

    def request(self, service: str, body: bytes | bytearray | memoryview | Message, *,
                timeout: float | None = 5.0) -> Message:
        self._check_open()
        check_name("service", service)
        timeout = check_seconds("timeout", timeout)
        message = as_message(body)
        call = _Call()
        self._calls[message.id] = call
        try:
            self._io.call(self._send_request, service, message, timeout)
            deadline = None if timeout is None else time.monotonic() + timeout
            while not call.event.wait(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))):
                self._check_open()
                if deadline is not None and time.monotonic() >= deadline:
                    raise Empty(f"no reply from service {service!r} within {timeout} s")
        finally:
            self._calls.pop(message.id, None)
        reply = call.reply
        assert reply is not None
        error = reply.headers.pop(_H_ERROR, None)
        if error is not None:
            raise RingbusError(f"service {service!r} failed: {error}")
        return reply

    def _reply(self, reply_to: str, call_id: Any, reply: Message | None, error: str | None) -> None:
        extra: dict[str, Any] = {_H_CALL: call_id}
        if error is not None:
            extra[_H_ERROR] = error
            reply = Message(b"")
        assert reply is not None
        try:
            self._io.ch.basic_publish("", reply_to, bytes(reply.body), self._properties(reply, 0, None, extra=extra))
        except pika_errors.UnroutableError:  # the caller is gone
            pass

    def _answer(self, delivery_tag: int, reply_to: str | None, call_id: Any, reply: Message | None,
                error: str | None) -> None:
        """On the I/O thread: reply to the caller (if it asked for a reply), then ack its request."""
        if reply_to:
            self._reply(reply_to, call_id, reply, error)
        self._io.ch.basic_ack(delivery_tag)

    def serve(self, service: str, handler: Handler, *, stop: threading.Event | None = None) -> None:
        self._check_open()
        check_name("service", service)
        inbox = Inbox()
        self._inboxes[inbox] = None

        def start() -> str:
            return self._consume_start(self._service_queue(service), 1, inbox)

        tag = self._io.call(start)
        try:
            while not self._closed and not (stop is not None and stop.is_set()):
                try:
                    item = inbox.get(time.monotonic() + SLICE)
                except Closed:
                    return
                if item is None:
                    continue
                method, properties, body = item
                request, _, internal = self._decode(properties, body, method.redelivered)
                reply: Message | None = None
                error: str | None = None
                try:
                    reply = reply_message(request, handler(request))
                except Exception as exc:  # the caller gets the error; this server keeps serving
                    log.exception("handler of service %r failed", service)
                    error = f"{type(exc).__name__}: {exc}"

                self._io.call(self._answer, method.delivery_tag, properties.reply_to,
                              internal.get(_H_CALL, request.id), reply, error)
        finally:
            self._stop_consuming(tag, inbox)

    # -- lifetime -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        with self._lock:
            self._closed = True
            open_deliveries = list(self._open)
            self._open.clear()
        for delivery in open_deliveries:  # RabbitMQ requeues them when the connection closes
            counts = self._counts(delivery.queue)
            with _counts_lock:
                counts.in_flight -= 1
        inboxes = list(self._inboxes.items())
        for inbox, _ in inboxes:
            inbox.close()

        def give_back() -> None:  # prefetched, never handed out: back in its place
            channel = self._io.ch
            self._io.conn.process_data_events(time_limit=0)  # what pika holds undispatched, into the inboxes
            for tag in list(channel.consumer_tags):  # first, or the acks below make room for new deliveries
                channel.basic_cancel(tag)
            for inbox, queue in inboxes:
                for method, properties, body in inbox.drain():
                    self._give_back(channel, method, properties, body, queue)

        if self._io.ch.is_open:
            try:
                self._io.call(give_back)
            except (PeerGone, Closed):
                pass  # the connection is gone: RabbitMQ requeues them itself
        for subscription in self._subscriptions:
            subscription.close()
        self._io.stop()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- housekeeping -------------------------------------------------------------------------------------------
    def drop_namespace(self) -> list[str]:
        """Delete every RabbitMQ queue of this Bus's prefix that the catalog names, the delay queues this process
        made, the topic exchange and the catalog itself; return the queue names deleted. For tests: the queues'
        messages are gone too."""
        self._check_open()

        def drop() -> list[str]:
            self._catalog_sync()
            names = [self._q(name) for name in self._catalog.records]
            with _counts_lock:
                for (server, _), counts in _counts.items():
                    if server == self._server:
                        names.extend(counts.delay_queues)
                names.extend(_made.pop(self._server, ()))
            deleted = []
            for name in names:
                try:
                    self._io.probe().queue_delete(name)
                    deleted.append(name)
                except pika_errors.ChannelClosedByBroker:
                    pass
            self._io.probe().exchange_delete(self._exchange)
            self._io.probe().queue_delete(self._catalog_queue)
            with _catalogs_lock:
                _catalogs.pop(self._server, None)
            return deleted

        return self._io.call(drop)
