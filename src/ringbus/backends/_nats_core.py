"""The asyncio core of the ``nats://`` backend: queues, topics and services on NATS JetStream (nats-py).

:class:`NatsCore` holds one nats-py connection and does every Bus operation as a coroutine on the event loop that
owns it; :class:`ringbus.backends.nats.NatsBus` runs it on a private loop thread for the sync API, and an asyncio
API can await it directly. The mapping is explained in :mod:`ringbus.backends.nats` and docs/backends.md.

The core never blocks its loop: every wait is an ``await`` with a timeout. Its only thread-safe entry points are
:meth:`NatsCore.take` (the settle check, called by whoever settles a message) and :meth:`NatsCore.ack_soon`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import random
import threading
import time
from collections import deque
from dataclasses import asdict
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import msgspec
import nats
import nats.errors as nats_errors
from nats.aio.msg import Msg

from ringbus.backends import _nats_wire as wire
from ringbus.backends._nats_js import (
    NOT_FOUND_CODES,
    STREAM_EXISTS_OTHERWISE,
    WRONG_LAST_SEQUENCE,
    JetStream,
    StreamState,
)
from ringbus.backends._nats_wire import ApiError
from ringbus.bus import TOPIC_HEADER, QueueOptions, QueueStats, topic_matcher
from ringbus.errors import Closed, Empty, Full, NotFound, PeerGone, RingbusError
from ringbus.message import Message

__all__ = ["NatsCore", "Delivery", "Listener", "TopicTap"]

log = logging.getLogger("ringbus.backends.nats")

RECONNECT_FIRST, RECONNECT_CAP = 0.05, 2.0  # reconnect backoff: doubling from 50 ms up to 2 s, with jitter
PUBLISH_CHUNK = 256  # publishes in flight at once in send_many / publish_many
FETCH_CHUNK = 256  # delayed messages looked at per pull
WAIT_SLICE = 1.0  # a waiting receive looks again at least this often (a bell may be lost in a reconnect)
DELAY_SLICE = 0.05  # ... and this often while the queue holds delayed messages
SERVICE_GROUP = "ringbus"
SUBSCRIBER_BUFFER = 10_000
_replace = msgspec.structs.replace
_json = msgspec.json.encode
_unjson = msgspec.json.decode


def _lease_margin(visibility_timeout: float) -> float:
    """How much earlier than NATS this client treats a lease as run out: the server starts the ack wait when it
    sends the message, the client when it reads it."""
    return min(1.0, 0.1 * visibility_timeout) + 0.01


# -- process-wide counts (queue_stats' counters, as in the amqp backend) ----------------------------------------
class _Counts:
    __slots__ = ("sent", "acked", "redelivered", "dead_lettered", "expired", "deduplicated", "consumers", "samples")

    def __init__(self) -> None:
        self.sent = self.acked = self.redelivered = self.dead_lettered = self.expired = self.deduplicated = 0
        self.consumers = 0
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=64)


_counts: dict[tuple[str, str], _Counts] = {}
_counts_lock = threading.Lock()


class _Queue:
    """What a core knows of one declared queue."""

    __slots__ = ("name", "options", "stream", "root", "dead_letter", "counts")

    def __init__(self, name: str, options: QueueOptions, stream: str, root: str, counts: _Counts) -> None:
        self.name = name
        self.options = options
        self.stream = stream
        self.root = root
        self.dead_letter = options.dead_letter_queue(name)
        self.counts = counts


class Delivery:
    """One delivered message and what settling it needs. ``state``: open, settled or expired."""

    __slots__ = ("message", "queue", "level", "reply", "payload", "headers", "lease", "state", "group", "stream",
                 "consumer")

    def __init__(self, message: Message, queue: _Queue, level: str, msg: Msg, lease: float, group: str | None,
                 consumer: str) -> None:
        self.message = message
        self.queue = queue
        self.level = level
        self.reply: str = msg.reply
        self.payload: bytes = msg.data
        self.headers: dict[str, str] | None = msg.headers
        self.lease = lease
        self.state = "open"
        self.group = group
        self.stream = queue.stream if group is None else ""
        self.consumer = consumer


class Listener:
    """A service's one-request-at-a-time subscription (auto-unsubscribed by the server after one request)."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except (nats_errors.BadSubscriptionError, nats_errors.ConnectionClosedError):
            pass  # already unsubscribed by its one request, or the connection is gone


class TopicTap:
    """An ephemeral subscription's core-NATS subscriptions; ``dropped`` counts what NATS dropped for lag."""

    def __init__(self) -> None:
        self.subs: list[Any] = []
        self.dropped = 0

    async def close(self) -> None:
        for sub in self.subs:
            try:
                await sub.unsubscribe()
            except (nats_errors.BadSubscriptionError, nats_errors.ConnectionClosedError):
                pass
        self.subs.clear()


def _backoff(servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
    """nats-py's reconnect hook: the first server, after a doubling delay with jitter (capped)."""
    tries = min((server.reconnects for server in servers), default=0)
    delay = min(RECONNECT_CAP, RECONNECT_FIRST * (2 ** min(tries, 16)))
    return servers[0], delay * (0.5 + random.random() / 2)


class NatsCore:
    """Every Bus operation on NATS JetStream as a coroutine; see the module docstring.

    Parameters
    ----------
    url : str
        ``nats://[user:password@]host:port[,host:port...]?prefix=name.`` (``tls://`` too).
    prefix : str or None
        Subject prefix of every subject and stream this core uses (the query's ``prefix`` when None).
    timeout : float
        Seconds to wait for NATS to answer one request before :class:`ringbus.PeerGone`.
    retention : int
        Publications the topic stream keeps for ``start="earliest"`` replay.
    """

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float = 10.0,
                 retention: int = 100_000) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        found = [value for name, value in query if name == "prefix"]
        self.prefix = wire.check_prefix(prefix if prefix is not None else (found[-1] if found else ""))
        if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
            raise ValueError(f"retention must be an int >= 1, got {retention!r}")
        self.retention = retention
        self.timeout = timeout
        scheme = "nats" if parts.scheme == "nats" else parts.scheme
        self.servers = [urlunsplit((scheme, netloc, "", "", "")) for netloc in parts.netloc.split(",")]
        self.where = ",".join(netloc.rpartition("@")[2] for netloc in parts.netloc.split(",")) or "127.0.0.1:4222"
        self.server_key = f"{self.where}|{self.prefix}"
        self.stream_prefix = (self.prefix + "q.").replace(".", "~")
        self.topic_root = self.prefix + "t."
        self.topic_stream = (self.prefix + "topics").replace(".", "~")
        self.dedup_stream = (self.prefix + "dedup").replace(".", "~")
        self.bodies = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.prefix) + "ringbus-bodies"
        self.nc = nats.NATS()
        self.js: JetStream = JetStream(self.nc, timeout, self.where)
        self._lock = threading.Lock()
        self._closed = False
        self._queues: dict[str, _Queue] = {}
        self._consumers: set[tuple[str, str]] = set()
        self._open: set[Delivery] = set()
        self._acks: deque[Delivery] = deque()
        self._ack_flush = False
        self._unconfirmed: dict[tuple[str, str], str] = {}  # consumer -> ack subject of its last plain ack
        self._topics_ready = False
        self._dedup_ready = False
        self._object_store: Any = None
        self._taps: dict[int, TopicTap] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- connection -------------------------------------------------------------------------------------------
    async def open(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.nc.connect(
                servers=self.servers, name="ringbus", connect_timeout=min(self.timeout, 5.0),
                max_reconnect_attempts=-1, reconnect_to_server_handler=_backoff, ping_interval=20,
                max_outstanding_pings=3, error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected), self.timeout)
        except (OSError, asyncio.TimeoutError, nats_errors.Error) as exc:
            await self._quietly_close()
            raise PeerGone(f"cannot connect to NATS at {self.where}: {type(exc).__name__}: {exc}") from None
        await self.js.start()

    async def _quietly_close(self) -> None:
        try:
            await self.nc.close()
        except Exception:  # noqa: BLE001 - closing a connection that never opened
            pass

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats_errors.SlowConsumerError):
            tap = self._taps.get(id(exc.sub))
            if tap is not None:
                tap.dropped += 1
                return
        log.debug("nats at %s: %r", self.where, exc)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("lost the connection to NATS at %s; reconnecting", self.where)

    async def _on_reconnected(self) -> None:
        log.warning("reconnected to NATS at %s", self.where)

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        if self._closed:
            raise Closed(f"the nats bus at {self.where} is closed")

    async def close(self) -> None:
        """Give back every unsettled message (NATS delivers it again at once, one attempt more), then close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            now = time.monotonic()
            held = [d for d in self._open if d.lease > now]
            self._open.clear()
        try:
            await self._send_acks()
            for delivery in held:
                await self.nc.publish(delivery.reply, b"-NAK")
            for msg in self.js.take_strays():
                await self.nc.publish(msg.reply, b"-NAK")
            for tap in list(self._taps.values()):
                await tap.close()
            await asyncio.wait_for(self.nc.flush(), self.timeout)
        except (nats_errors.Error, asyncio.TimeoutError, OSError) as exc:
            log.warning("could not give back the unsettled messages of %s (they come back after their "
                        "visibility timeout): %r", self.where, exc)
        await self._quietly_close()

    # -- queues: names, declarations ------------------------------------------------------------------------
    def _stream(self, name: str) -> str:
        return self.stream_prefix + wire.token(name)

    def _root(self, name: str) -> str:
        return f"{self.prefix}q.{wire.token(name)}"

    def _counts(self, name: str) -> _Counts:
        key = (self.server_key, name)
        counts = _counts.get(key)
        if counts is None:
            with _counts_lock:
                counts = _counts.setdefault(key, _Counts())
        return counts

    def _stream_config(self, name: str, options: QueueOptions, side: bool) -> dict[str, Any]:
        record = {"ringbus": 1, "queue": name, "options": asdict(options), "side": side}
        window = options.dedup_window if options.dedup_window > 0 else 120.0
        return {"name": self._stream(name), "subjects": [self._root(name) + ".*"], "retention": "workqueue",
                "storage": "file" if options.durable else "memory", "discard": "old", "max_msgs": -1,
                "max_bytes": -1, "max_age": 0, "max_msg_size": -1, "max_consumers": -1, "num_replicas": 1,
                "duplicate_window": int(window * 1e9), "description": _json(record).decode()}

    def _remember(self, name: str, options: QueueOptions) -> _Queue:
        queue = _Queue(name, options, self._stream(name), self._root(name), self._counts(name))
        self._queues[name] = queue
        return queue

    async def _record_of(self, name: str) -> dict[str, Any]:
        try:
            config = await self.js.stream_config(self._stream(name))
        except ApiError as exc:
            if exc.err_code in NOT_FOUND_CODES:
                raise NotFound(f"queue {name!r} was not declared (declare_queue first)") from None
            raise
        try:
            record = _unjson(config.get("description") or "")
            assert isinstance(record, dict) and record.get("queue") == name
        except (msgspec.DecodeError, AssertionError):
            raise ValueError(f"JetStream stream {self._stream(name)!r} was not made by ringbus (its description "
                             "holds no ringbus queue record); use another queue name or prefix") from None
        return record

    async def queue(self, name: str) -> _Queue:
        """The queue ``name`` (read from its stream once per core); NotFound if it was never declared."""
        queue = self._queues.get(name)
        if queue is None:
            record = await self._record_of(name)
            queue = self._remember(name, QueueOptions(**record["options"]))
        return queue

    async def declare_queue(self, name: str, options: QueueOptions) -> None:
        await self._declare(name, options, side=False)
        letters = options.dead_letter_queue(name)
        if letters != name:
            await self._declare(letters, QueueOptions(durable=options.durable), side=True)

    async def _declare(self, name: str, options: QueueOptions, side: bool) -> None:
        config = self._stream_config(name, options, side)
        try:
            await self.js.add_stream(config)
        except ApiError as exc:
            if exc.err_code != STREAM_EXISTS_OTHERWISE:
                if exc.err_code == 10065:
                    raise ValueError(f"queue {name!r}: another JetStream stream already takes its subjects "
                                     f"{config['subjects']}") from None
                raise
            record = await self._record_of(name)
            if side:
                return  # a dead-letter queue that exists already keeps its own options
            mine = _unjson(_json(asdict(options)))
            differ = sorted(k for k in mine if record["options"].get(k) != mine[k])
            if differ and record.get("side") and record["options"]["durable"] == options.durable:
                await self.js.update_stream(config)  # declaring a dead-letter queue made on the side
            elif differ:
                raise ValueError(f"queue {name!r} exists with other options: " + ", ".join(
                    f"{k}={record['options'].get(k)!r} (not {mine[k]!r})" for k in differ)) from None
            elif record.get("side") != side:
                await self.js.update_stream(config)
        self._remember(name, options)

    async def queues(self) -> list[str]:
        streams = await self.js.stream_names(self.prefix + "q.>")
        names = (wire.queue_of_stream(stream, self.stream_prefix) for stream in streams)
        return sorted(name for name in names if name is not None)

    async def _consumer(self, queue: _Queue, level: str) -> str:
        """The durable pull consumer of ``level`` (a priority or the delayed messages); made on first use."""
        consumer = wire.consumer_of_level(level)
        if (queue.stream, consumer) not in self._consumers:
            wait = 30.0 if level == wire.DELAYED else queue.options.visibility_timeout
            try:
                await self.js.add_consumer(queue.stream, {
                    "durable_name": consumer, "deliver_policy": "all", "ack_policy": "explicit",
                    "ack_wait": int(wait * 1e9), "max_deliver": -1, "filter_subject": f"{queue.root}.{level}",
                    "replay_policy": "instant", "max_ack_pending": -1, "max_waiting": 512})
            except ApiError as exc:
                if exc.err_code in NOT_FOUND_CODES:
                    self._queues.pop(queue.name, None)
                    raise NotFound(f"queue {queue.name!r} is gone from NATS") from None
                raise
            self._consumers.add((queue.stream, consumer))
        return consumer

    # -- queues: send -----------------------------------------------------------------------------------------
    async def _publish(self, queue: _Queue, subject: str, payload: bytes,
                       headers: dict[str, str] | None) -> wire.PubAck:
        try:
            return await self.js.publish(subject, payload, headers)
        except nats_errors.NoRespondersError:
            self._queues.pop(queue.name, None)
            await self._record_of(queue.name)  # NotFound if the stream is gone ...
            try:  # ... else JetStream was busy (e.g. recovering after a restart): once more
                return await self.js.publish(subject, payload, headers)
            except nats_errors.NoRespondersError:
                raise PeerGone(f"JetStream at {self.where} did not take the message for queue {queue.name!r} "
                               "(no responders)") from None
        except ApiError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise
            raise RingbusError(f"NATS refused the message for queue {queue.name!r}: {exc.description}") from None

    async def _payload(self, message: Message, headers: dict[str, str]) -> bytes:
        """The message's payload, its body put aside in the object store when it would pass NATS's max_payload."""
        payload = wire.pack(message)
        if len(payload) + 512 <= self.nc.max_payload:
            return payload
        store = await self._bodies()
        name = message.id + "-" + str(random.getrandbits(32))
        await store.put(name, bytes(message.body))
        headers[wire.H_BODY] = name
        return wire.pack(_replace(message, body=b""))

    async def _bodies(self) -> Any:
        if self._object_store is None:
            from nats.js.api import ObjectStoreConfig

            js = self.nc.jetstream(timeout=self.timeout)
            self._object_store = await js.create_object_store(self.bodies, ObjectStoreConfig(bucket=self.bodies))
        return self._object_store

    async def send(self, name: str, message: Message, *, delay: float | None = None, ttl: float | None = None,
                   dedup_id: str | None = None, attempts: int = 0) -> str:
        queue = await self.queue(name)
        options = queue.options
        headers: dict[str, str] = {}
        ttl = options.ttl if ttl is None else ttl
        if ttl is not None:
            headers[wire.H_EXPIRES] = repr(time.time() + (delay or 0.0) + ttl)
        dedup = dedup_id is not None and options.dedup_window > 0
        if dedup:
            headers[wire.H_MSG_ID] = wire.dedup_key(dedup_id)  # type: ignore[arg-type]
        payload = await self._payload(message, headers)
        if delay:
            subject = f"{queue.root}.{wire.DELAYED}"
            headers[wire.H_DUE] = repr(time.time() + delay)
            headers[wire.H_LEVEL] = str(message.priority)
        else:
            subject = f"{queue.root}.{message.priority}"
        if options.max_length is None:
            ack = await self._publish(queue, subject, payload, headers or None)
        else:
            ack = await self._publish_bounded(queue, subject, payload, headers)
        if ack.duplicate:
            with _counts_lock:
                queue.counts.deduplicated += 1
            return await self._original_id(queue, ack.seq, dedup_id or "", message.id)
        with _counts_lock:
            queue.counts.sent += 1
        if dedup:
            await self._note_dedup(queue, dedup_id or "", message.id)
        return message.id

    async def send_many(self, name: str, messages: list[Message]) -> list[str]:
        """Send in order, up to PUBLISH_CHUNK publishes in flight (JetStream stores one connection's publishes in
        the order they arrive). Not atomic: an error leaves the ones before it sent."""
        queue = await self.queue(name)
        if queue.options.max_length is not None or queue.options.ttl is not None:
            return [await self.send(name, message) for message in messages]
        for start in range(0, len(messages), PUBLISH_CHUNK):
            chunk = messages[start:start + PUBLISH_CHUNK]
            sends = []
            for message in chunk:
                headers: dict[str, str] = {}
                payload = await self._payload(message, headers)
                sends.append(self._publish(queue, f"{queue.root}.{message.priority}", payload, headers or None))
            results = await asyncio.gather(*sends, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            with _counts_lock:
                queue.counts.sent += len(chunk)
        return [message.id for message in messages]

    async def _publish_bounded(self, queue: _Queue, subject: str, payload: bytes,
                               headers: dict[str, str]) -> wire.PubAck:
        """Publish unless ``max_length`` messages wait: the count is read first and the publish carries the
        stream's last sequence, so a send that raced another one is refused by NATS and counted again."""
        options = queue.options
        assert options.max_length is not None
        for _ in range(100):
            state = await self.js.stream_state(queue.stream, queue.root + ".*")
            waiting, levels = await self._waiting(queue, state)
            if waiting >= options.max_length:
                if options.overflow == "reject":
                    raise Full(f"queue {queue.name!r} is full ({waiting} messages waiting, overflow='reject')")
                if not await self._drop_oldest(queue, levels):
                    raise Full(f"queue {queue.name!r} is full and every waiting message is delayed: none to drop")
                continue
            try:
                return await self._publish(queue, subject, payload,
                                           {**headers, "Nats-Expected-Last-Sequence": str(state.last_seq)})
            except ApiError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
        raise Full(f"queue {queue.name!r}: gave up a send after 100 races with other senders for the last place")

    async def _waiting(self, queue: _Queue, state: StreamState) -> tuple[int, list[str]]:
        """Messages waiting (not in flight) and the levels that have any, from the stream and its consumers."""
        subjects = state.subjects or {}
        waiting = subjects.get(f"{queue.root}.{wire.DELAYED}", 0)
        levels = []
        for subject, count in subjects.items():
            level = wire.level_of(subject)
            if level == wire.DELAYED or count <= 0:
                continue
            try:
                pending = (await self.js.consumer_info(queue.stream, wire.consumer_of_level(level))).num_pending
            except ApiError as exc:
                if exc.err_code not in NOT_FOUND_CODES:
                    raise
                pending = count  # nobody received from this level yet
            waiting += pending
            if pending:
                levels.append(level)
        return waiting, levels

    async def _drop_oldest(self, queue: _Queue, levels: list[str]) -> bool:
        """Dead-letter (``overflow``) the oldest waiting message of the lowest level that has one."""
        for level in sorted(levels, key=int):
            consumer = await self._consumer(queue, level)
            msgs, _ = await self.js.pull(queue.stream, consumer, 1, None)
            for msg in msgs:
                message = wire.unpack(msg.data)
                delivery = Delivery(message, queue, level, msg, time.monotonic(), None, consumer)
                await self._dead(delivery, "overflow")
                return True
        return False

    async def _original_id(self, queue: _Queue, seq: int, dedup_id: str, fallback: str) -> str:
        """The id of the message a repeated dedup_id repeats: from the stream while it waits, else from the record
        its send left in the dedup stream."""
        stored = await self.js.get_message(queue.stream, seq=seq)
        if stored is None:
            stored = await self.js.get_message(self.dedup_stream, last_by_subj=self._dedup_subject(queue, dedup_id))
            if stored is None:
                return fallback
            return str(_unjson(_b64(stored["data"])))
        return wire.unpack(_b64(stored.get("data", ""))).id

    def _dedup_subject(self, queue: _Queue, dedup_id: str) -> str:
        digest = hashlib.sha1(dedup_id.encode()).hexdigest()
        return f"{self.prefix}dd.{wire.token(queue.name)}.{digest}"

    async def _note_dedup(self, queue: _Queue, dedup_id: str, message_id: str) -> None:
        if not self._dedup_ready:
            try:
                await self.js.add_stream({"name": self.dedup_stream, "subjects": [self.prefix + "dd.>"],
                                          "retention": "limits", "storage": "file", "max_msgs_per_subject": 1,
                                          "max_bytes": 64 << 20, "discard": "old", "num_replicas": 1})
            except ApiError as exc:
                if exc.err_code != STREAM_EXISTS_OTHERWISE:
                    raise
            self._dedup_ready = True
        # Not waited for: only a repeat after the original was consumed reads it.
        await self.nc.publish(self._dedup_subject(queue, dedup_id), _json(message_id))

    # -- queues: receive --------------------------------------------------------------------------------------
    async def fetch(self, name: str, count: int, timeout: float | None) -> list[Delivery]:
        """Up to ``count`` deliveries of queue ``name``, highest priority first; [] if none came within
        ``timeout`` seconds (None: wait until some come)."""
        queue = await self.queue(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        bell: Any = None
        rung = asyncio.Event()
        try:
            while True:
                self.check_open()
                got, delayed = await self._round(queue, count)
                if got:
                    return got
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0.0:
                    return []
                if bell is None:
                    # Any publish on the queue's subjects rings; subscribed before looking again so none is missed.
                    async def ring(msg: Msg) -> None:
                        rung.set()

                    bell = await self.nc.subscribe(queue.root + ".*", cb=ring)
                    await self.nc.flush(timeout=self.timeout)
                    continue
                wait = DELAY_SLICE if delayed else WAIT_SLICE
                try:
                    await asyncio.wait_for(rung.wait(), wait if left is None else min(wait, left))
                except asyncio.TimeoutError:
                    pass
                rung.clear()
        except nats_errors.TimeoutError as exc:
            raise self.js.gone("a flush", exc) from None
        finally:
            if bell is not None:
                try:
                    await bell.unsubscribe()
                except (nats_errors.BadSubscriptionError, nats_errors.ConnectionClosedError):
                    pass

    async def _round(self, queue: _Queue, count: int) -> tuple[list[Delivery], bool]:
        """One look at the queue: move due delayed messages in, then take from the levels, highest first."""
        subjects = (await self.js.stream_state(queue.stream, queue.root + ".*")).subjects or {}
        delayed = subjects.get(f"{queue.root}.{wire.DELAYED}", 0)
        if delayed and await self._move_due(queue):
            subjects = (await self.js.stream_state(queue.stream, queue.root + ".*")).subjects or {}
        levels = sorted((wire.level_of(s) for s, n in subjects.items() if n > 0 and not s.endswith(".d")),
                        key=int, reverse=True)
        out: list[Delivery] = []
        for level in levels:
            consumer = await self._consumer(queue, level)
            msgs, status = await self.js.pull(queue.stream, consumer, count - len(out), None)
            if status in ("409", "503"):
                self._consumers.discard((queue.stream, consumer))  # deleted behind us: made again next time
            for msg in msgs:
                delivery = await self._accept(queue, level, msg, consumer)
                if delivery is not None:
                    out.append(delivery)
            if len(out) >= count:
                break
        return out, bool(delayed)

    async def _move_due(self, queue: _Queue) -> bool:
        """Due delayed messages join their level (behind what waits there); the others wait in NATS (a nak with
        their remaining delay). True if any moved."""
        consumer = await self._consumer(queue, wire.DELAYED)
        msgs, _ = await self.js.pull(queue.stream, consumer, FETCH_CHUNK, None)
        moved = False
        now = time.time()
        for msg in msgs:
            headers = dict(msg.headers or {})
            due = float(headers.pop(wire.H_DUE, "0"))
            if due > now:
                await msg.nak(delay=due - now)
                continue
            level = headers.pop(wire.H_LEVEL, "0")
            headers.pop(wire.H_MSG_ID, None)
            await self._publish(queue, f"{queue.root}.{level}", msg.data, headers or None)
            await msg.ack()
            moved = True
        return moved

    async def _accept(self, queue: _Queue, level: str, msg: Msg, consumer: str,
                      group: str | None = None) -> Delivery | None:
        """A pulled message becomes a leased delivery, or (expired, out of attempts) a dead letter and None."""
        message = wire.unpack(msg.data)
        headers = msg.headers
        if headers and wire.H_BODY in headers:
            message = _replace(message, body=(await (await self._bodies()).get(headers[wire.H_BODY])).data)
        message.attempts += wire.delivery_count(msg.reply) - 1
        options = queue.options
        lease = time.monotonic() + options.visibility_timeout - _lease_margin(options.visibility_timeout)
        delivery = Delivery(message, queue, level, msg, lease, group, consumer)
        if group is not None:
            delivery.stream = self.topic_stream
        expires = headers.get(wire.H_EXPIRES) if headers else None
        if expires is not None and float(expires) <= time.time():
            await self._dead(delivery, "expired")
            return None
        if message.attempts >= options.max_attempts:
            await self._dead(delivery, "max_attempts")
            return None
        if message.attempts:
            with _counts_lock:
                queue.counts.redelivered += 1
        with self._lock:
            if self._closed:
                raise Closed(f"the nats bus at {self.where} is closed")
            self._open.add(delivery)
        return delivery

    # -- queues: settle ---------------------------------------------------------------------------------------
    def take(self, delivery: Delivery, action: str) -> None:
        """Claim ``delivery`` for one settle (any thread); raises if it is settled, its lease ran out or the core
        is closed."""
        with self._lock:
            if self._closed:
                raise Closed(f"cannot {action} a message of queue {delivery.queue.name!r}: its bus is closed "
                             "(NATS delivers it again)")
            if delivery.state == "open" and time.monotonic() >= delivery.lease:
                delivery.state = "expired"
                self._open.discard(delivery)
            if delivery.state == "expired":
                raise RingbusError(f"cannot {action} message {delivery.message.id!r} of queue "
                                   f"{delivery.queue.name!r}: its visibility timeout ran out and it went back to "
                                   "the queue (it is delivered again)")
            if delivery.state != "open":
                raise RingbusError(f"cannot {action} message {delivery.message.id!r} of queue "
                                   f"{delivery.queue.name!r}: already settled")
            delivery.state = "settled"
            self._open.discard(delivery)

    async def _confirm(self, reply: str, body: bytes = b"+ACK") -> None:
        """Settle one delivery and wait until JetStream has done it (an ack with a reply)."""
        await self.js.request(reply, body)

    async def _settled(self, delivery: Delivery) -> None:
        """After the final ack of a message: its body in the object store, if any, is no longer needed."""
        headers = delivery.headers
        if headers and wire.H_BODY in headers and delivery.group is None:
            try:
                await (await self._bodies()).delete(headers[wire.H_BODY])
            except Exception:  # noqa: BLE001 - a leftover body costs space, not correctness
                log.warning("could not delete the stored body %r", headers[wire.H_BODY])

    async def ack(self, delivery: Delivery) -> None:
        self.take(delivery, "ack")
        await self._confirm(delivery.reply)
        with _counts_lock:
            delivery.queue.counts.acked += 1
        await self._settled(delivery)

    def ack_soon(self, delivery: Delivery) -> None:
        """Ack without waiting (any thread): sent by the loop soon; :meth:`sync_acks` waits until NATS did them."""
        self.take(delivery, "ack")
        with _counts_lock:
            delivery.queue.counts.acked += 1
        with self._lock:
            self._acks.append(delivery)
            if self._ack_flush:
                return
            self._ack_flush = True
        assert self.loop is not None
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._send_acks()))  # type: ignore[union-attr]

    async def _send_acks(self) -> None:
        with self._lock:
            self._ack_flush = False
        while self._acks:
            delivery = self._acks.popleft()
            try:
                await self.nc.publish(delivery.reply, b"+ACK")
            except nats_errors.Error as exc:  # lost: NATS delivers the message again after its ack wait
                log.warning("could not send an ack to NATS at %s: %r", self.where, exc)
                continue
            self._unconfirmed[(delivery.stream, delivery.consumer)] = delivery.reply
            if delivery.headers and wire.H_BODY in delivery.headers:
                await self._settled(delivery)

    async def sync_acks(self) -> None:
        """Wait until JetStream has processed every ack sent without waiting: it handles one consumer's acks in
        order, so a confirmed repeat of the last ack (a no-op by then) answers after all of them."""
        await self._send_acks()
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        for reply in unconfirmed.values():
            try:
                await self._confirm(reply)
            except (PeerGone, nats_errors.Error) as exc:
                log.warning("NATS at %s did not confirm acks: %r", self.where, exc)

    async def nack(self, delivery: Delivery, requeue: bool, delay: float | None) -> None:
        self.take(delivery, "nack")
        message = delivery.message
        if not requeue:
            await self._dead(delivery, "nacked")
        elif message.attempts + 1 >= delivery.queue.options.max_attempts:
            await self._dead(delivery, "max_attempts")
        elif delivery.group is not None:  # a topic stream is shared: its message cannot be put back, only nak'd
            await self._confirm(delivery.reply, b"-NAK" if not delay else _nak_delay(delay))
        else:
            await self._requeue(delivery, delay)

    async def _requeue(self, delivery: Delivery, delay: float | None) -> None:
        """Put the message back at the end of its level (or among the delayed) one attempt older, then ack the
        delivery: NATS would put a nak'd message in front, and count it in flight until it is delivered again."""
        queue = delivery.queue
        headers = dict(delivery.headers or {})
        headers.pop(wire.H_MSG_ID, None)
        message = wire.unpack(delivery.payload)
        message.attempts = delivery.message.attempts + 1
        if delay:
            subject = f"{queue.root}.{wire.DELAYED}"
            headers[wire.H_DUE] = repr(time.time() + delay)
            headers[wire.H_LEVEL] = delivery.level
        else:
            subject = f"{queue.root}.{delivery.level}"
        await self._publish(queue, subject, wire.pack(message), headers or None)
        await self._confirm(delivery.reply)

    async def reject(self, delivery: Delivery) -> None:
        self.take(delivery, "reject")
        await self._dead(delivery, "rejected")

    async def _dead(self, delivery: Delivery, reason: str) -> None:
        """Copy the message to its dead-letter queue with the reason, then ack it."""
        queue = delivery.queue
        message = wire.unpack(delivery.payload)
        headers = {**message.headers, wire.DEAD_REASON: reason, wire.DEAD_FROM: queue.name}
        letter = _replace(message, headers=headers, attempts=0)
        nats_headers = {}
        if delivery.headers and wire.H_BODY in delivery.headers:
            nats_headers[wire.H_BODY] = delivery.headers[wire.H_BODY]
        try:
            target = await self.queue(queue.dead_letter)
            await self._publish(target, f"{target.root}.{message.priority}", wire.pack(letter), nats_headers or None)
            with _counts_lock:
                target.counts.sent += 1
        except (NotFound, RingbusError) as exc:
            if isinstance(exc, PeerGone):
                raise
            log.warning("dropped a dead letter of queue %r: %s", queue.name, exc)
        await self._confirm(delivery.reply)
        with _counts_lock:
            queue.counts.dead_lettered += 1
            if reason == "expired":
                queue.counts.expired += 1

    async def release(self, deliveries: list[Delivery]) -> None:
        """Give back deliveries never handed out (a consume loop's leftovers): NATS delivers them again at once."""
        for delivery in deliveries:
            with self._lock:
                if delivery.state != "open":
                    continue
                delivery.state = "settled"
                self._open.discard(delivery)
            await self.nc.publish(delivery.reply, b"-NAK")

    # -- queues: stats ----------------------------------------------------------------------------------------
    async def queue_stats(self, name: str) -> QueueStats:
        queue = await self.queue(name)
        await self.sync_acks()
        try:
            subjects = (await self.js.stream_state(queue.stream, queue.root + ".*")).subjects or {}
        except ApiError as exc:
            if exc.err_code in NOT_FOUND_CODES:
                self._queues.pop(name, None)
                raise NotFound(f"queue {name!r} is gone from NATS") from None
            raise
        delayed = subjects.get(f"{queue.root}.{wire.DELAYED}", 0)
        total = in_flight = 0
        for subject, count in subjects.items():
            level = wire.level_of(subject)
            if level == wire.DELAYED:
                continue
            total += count
            try:
                in_flight += (await self.js.consumer_info(queue.stream, wire.consumer_of_level(level))).num_ack_pending
            except ApiError as exc:
                if exc.err_code not in NOT_FOUND_CODES:
                    raise
        ready = max(total - in_flight, 0)
        counts = queue.counts
        with _counts_lock:
            now = time.monotonic()
            counts.samples.append((now, counts.sent, counts.acked))
            while len(counts.samples) > 2 and now - counts.samples[0][0] > 5.0:
                counts.samples.popleft()
            first = counts.samples[0]
            span = now - first[0]
            return QueueStats(
                name=name, depth=ready + delayed, ready=ready, delayed=delayed, in_flight=in_flight,
                consumers=counts.consumers, sent=counts.sent, acked=counts.acked, redelivered=counts.redelivered,
                dead_lettered=counts.dead_lettered, expired=counts.expired, deduplicated=counts.deduplicated,
                send_rate=(counts.sent - first[1]) / span if span > 0 else 0.0,
                ack_rate=(counts.acked - first[2]) / span if span > 0 else 0.0)

    def consumers(self, name: str, change: int) -> None:
        """Count a consume loop of this process in (+1) or out (-1) of queue ``name``."""
        counts = self._counts(name)
        with _counts_lock:
            counts.consumers += change

    # -- topics -----------------------------------------------------------------------------------------------
    async def _topics(self) -> None:
        if self._topics_ready:
            return
        try:
            await self.js.add_stream({"name": self.topic_stream, "subjects": [self.topic_root + ">"],
                                      "retention": "limits", "storage": "file", "max_msgs": self.retention,
                                      "discard": "old", "num_replicas": 1})
        except ApiError as exc:
            if exc.err_code != STREAM_EXISTS_OTHERWISE:
                raise
        self._topics_ready = True

    async def publish(self, topic: str, messages: list[Message]) -> None:
        """Publish on ``topic`` (JetStream: confirmed, so durable groups get it), up to PUBLISH_CHUNK in flight."""
        await self._topics()
        subject = self.topic_root + topic
        for start in range(0, len(messages), PUBLISH_CHUNK):
            payloads = []
            for message in messages[start:start + PUBLISH_CHUNK]:
                payload = wire.pack(message)
                if len(payload) > self.nc.max_payload:
                    raise ValueError(f"a message of {len(payload)} bytes is over NATS's max_payload "
                                     f"({self.nc.max_payload}) for topics; send a claim check instead")
                payloads.append(payload)
            results = await asyncio.gather(*(self.js.publish(subject, payload) for payload in payloads),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, nats_errors.NoRespondersError):
                    self._topics_ready = False
                    raise PeerGone(f"the topic stream {self.topic_stream!r} did not answer; publish again")
                if isinstance(result, BaseException):
                    raise result

    def _topic_message(self, msg: Msg) -> Message:
        message = wire.unpack(msg.data)
        message.headers[TOPIC_HEADER] = msg.subject[len(self.topic_root):]
        return message

    async def tap(self, pattern: str, group: str | None, sink: Callable[[Message], None]) -> TopicTap:
        """An ephemeral subscription: core NATS subscriptions covering ``pattern``; ``sink`` gets each matching
        message on the loop's thread. Members of a ``group`` share messages (a NATS queue group)."""
        subjects, exact = wire.subject_filters(pattern)
        match = None if exact else topic_matcher(pattern)
        tap = TopicTap()

        async def deliver(msg: Msg) -> None:
            if match is not None and not match(msg.subject[len(self.topic_root):]):
                return
            sink(self._topic_message(msg))

        for subject in subjects:
            sub = await self.nc.subscribe(self.topic_root + subject, queue=group or "", cb=deliver,
                                          pending_msgs_limit=SUBSCRIBER_BUFFER)
            tap.subs.append(sub)
            self._taps[id(sub)] = tap
        await self.nc.flush(timeout=self.timeout)  # a publication after subscribe() returns must reach us
        return tap

    async def untap(self, tap: TopicTap) -> None:
        for sub in tap.subs:
            self._taps.pop(id(sub), None)
        await tap.close()

    def _group_queue(self, group: str) -> _Queue:
        """A durable group is a queue in all but storage: its messages stay in the topic stream."""
        name = f"@{group}"
        queue = self._queues.get(name)
        if queue is None:
            queue = _Queue(name, QueueOptions(), self.topic_stream, "", self._counts(name))
            self._queues[name] = queue
        return queue

    async def join(self, pattern: str, group: str, start: str) -> None:
        """Join (or create) durable group ``group``: a durable consumer of the topic stream filtered by the
        pattern; a new one starts after the last publication, or at the first retained one (``earliest``)."""
        await self._topics()
        subjects, _ = wire.subject_filters(pattern)
        consumer = wire.group_consumer(group)
        config = {"durable_name": consumer, "description": _json({"pattern": pattern}).decode(),
                  "deliver_policy": "all" if start == "earliest" else "new", "ack_policy": "explicit",
                  "ack_wait": int(QueueOptions().visibility_timeout * 1e9), "max_deliver": -1,
                  "filter_subject": self.topic_root + wire.one_filter(subjects), "replay_policy": "instant",
                  "max_ack_pending": -1, "max_waiting": 512}
        try:
            info = await self.js.consumer_info(self.topic_stream, consumer)
        except ApiError as exc:
            if exc.err_code not in NOT_FOUND_CODES:
                raise
            await self.js.add_consumer(self.topic_stream, config)
        else:
            held = _unjson((info.config or {}).get("description") or "{}").get("pattern")
            if held != pattern:
                raise ValueError(f"durable group {group!r} is bound to pattern {held!r}, not {pattern!r}")
        await self._declare(f"@{group}.dlq", QueueOptions(), side=True)
        self._group_queue(group)

    async def fetch_group(self, pattern: str, group: str, count: int, timeout: float | None) -> list[Delivery]:
        """Up to ``count`` deliveries of durable group ``group`` within ``timeout`` seconds (None: until some)."""
        queue = self._group_queue(group)
        consumer = wire.group_consumer(group)
        subjects, exact = wire.subject_filters(pattern)
        exact = exact and len(subjects) == 1  # one_filter() widened two subjects to their parent
        match = topic_matcher(pattern)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.check_open()
            left = None if deadline is None else deadline - time.monotonic()
            expires = WAIT_SLICE if left is None else min(left, WAIT_SLICE)
            msgs, _ = await self.js.pull(self.topic_stream, consumer, count, expires if expires > 0.001 else None)
            out = []
            for msg in msgs:
                topic = msg.subject[len(self.topic_root):]
                if not exact and not match(topic):
                    await msg.ack()  # over-matched by the consumer's one filter subject
                    continue
                delivery = await self._accept(queue, "0", msg, consumer, group)
                if delivery is not None:
                    delivery.message.headers[TOPIC_HEADER] = topic
                    out.append(delivery)
            if out or (deadline is not None and time.monotonic() >= deadline):
                return out

    # -- services ---------------------------------------------------------------------------------------------
    def _service(self, service: str) -> str:
        return f"{self.prefix}s.{wire.token(service)}"

    async def request(self, service: str, message: Message, timeout: float | None) -> Message:
        """Call ``service``: a request on its subject, the reply on an inbox. While no server listens (NATS answers
        'no responders' at once) the request is sent again, with backoff, until ``timeout``."""
        payload = wire.pack(message)
        if len(payload) > self.nc.max_payload:
            raise ValueError(f"a request of {len(payload)} bytes is over NATS's max_payload ({self.nc.max_payload})")
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002
        while True:
            self.check_open()
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if left <= 0.0:
                raise Empty(f"no reply from service {service!r} within {timeout} s (no server answered)")
            try:
                reply = await self.nc.request(self._service(service), payload, timeout=left)
            except nats_errors.NoRespondersError:
                await asyncio.sleep(min(pause, max(left, 0.0)))
                pause = min(pause * 2, 0.05)
                continue
            except (nats_errors.TimeoutError, asyncio.TimeoutError):
                if deadline is None:
                    continue
                raise Empty(f"no reply from service {service!r} within {timeout} s") from None
            except nats_errors.ConnectionClosedError:
                raise Closed(f"the nats bus at {self.where} is closed") from None
            if reply.headers and wire.H_ERROR in reply.headers:
                raise RingbusError(f"service {service!r} failed: {reply.headers[wire.H_ERROR]}")
            return wire.unpack(reply.data)

    async def listen(self, service: str, sink: Callable[[Message, str], None]) -> Listener:
        """Take the next request of ``service`` (one only: the server unsubscribes us after it, so a busy server
        gets no more); ``sink(request, reply_subject)`` runs on the loop's thread."""

        async def deliver(msg: Msg) -> None:
            sink(wire.unpack(msg.data), msg.reply)

        sub = await self.nc.subscribe(self._service(service), queue=SERVICE_GROUP, cb=deliver)
        await sub.unsubscribe(limit=1)  # UNSUB <sid> 1: the server itself stops after one request
        return Listener(sub)

    async def respond(self, reply_subject: str, reply: Message | None, error: str | None) -> None:
        if not reply_subject:
            return
        if error is not None:
            await self.nc.publish(reply_subject, b"", headers={wire.H_ERROR: error.replace("\r", " ").replace(
                "\n", " ")[:4000]})
            return
        assert reply is not None
        await self.nc.publish(reply_subject, wire.pack(reply))

    # -- housekeeping -----------------------------------------------------------------------------------------
    async def drop_namespace(self) -> list[str]:
        """Delete every stream of this prefix (queues, topics, dedup records, stored bodies); return the queue
        names deleted."""
        deleted = []
        for stream in await self.js.stream_names(self.prefix + "q.>"):
            if await self.js.delete_stream(stream):
                name = wire.queue_of_stream(stream, self.stream_prefix)
                if name is not None:
                    deleted.append(name)
        for stream in (self.topic_stream, self.dedup_stream, "OBJ_" + self.bodies):
            await self.js.delete_stream(stream)
        self._queues.clear()
        self._consumers.clear()
        self._topics_ready = self._dedup_ready = False
        self._object_store = None
        return sorted(deleted)


def _nak_delay(delay: float) -> bytes:
    return b"-NAK " + _json({"delay": int(delay * 1e9)})


def _b64(text: str) -> bytes:
    return base64.b64decode(text)
