"""The connection, queue lookup and settling of the ``nats://`` backend's asyncio core.

:class:`CoreBase` holds one nats-py connection (reconnecting with capped, jittered backoff), knows the queues it
has met, and settles deliveries: ack, the republish of a nack (one attempt older), dead letters, and giving back
at close. :class:`ringbus.backends._nats_core.NatsCore` adds the queue, topic and service operations to it.

Everything is a coroutine on the loop that owns the connection, except :meth:`CoreBase.take` and
:meth:`CoreBase.ack_soon`, which any thread may call.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import msgspec
import nats.errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ringbus.backends import _nats_wire as wire
from ringbus.backends._nats_js import NOT_FOUND_CODES, WRONG_LAST_SEQUENCE, JetStream
from ringbus.backends._nats_wire import ApiError
from ringbus.bus import QueueOptions
from ringbus.errors import Closed, NotFound, PeerGone, RingbusError
from ringbus.message import Message

__all__ = ["CoreBase", "Delivery", "Queue"]

log = logging.getLogger("ringbus.backends.nats")

# Subjects are one space per account: without a prefix, ringbus's streams would capture other applications'
# subjects such as "t.>" - hence a default one.
DEFAULT_PREFIX = "ringbus."
RECONNECT_FIRST, RECONNECT_CAP = 0.05, 2.0  # reconnect backoff: doubling from 50 ms up to 2 s, with jitter
_replace = msgspec.structs.replace
_json = msgspec.json.encode
_unjson = msgspec.json.decode


HEARTBEAT_WINDOW = 5.0  # the longest ack wait: a delivery held longer is kept alive by in-progress acks
HEARTBEAT_EVERY = 1.0  # seconds between two in-progress acks of a held delivery


def lease_margin(visibility_timeout: float) -> float:
    """How much earlier than NATS this client treats a lease as run out, when NATS ends it (ack wait =
    visibility timeout): the server starts the ack wait when it sends the message, the client when it reads it."""
    return min(1.0, 0.1 * visibility_timeout) + 0.01


class Counts:
    """queue_stats' counters of one queue, kept by the buses of this process (as the amqp backend's)."""

    __slots__ = ("sent", "acked", "redelivered", "dead_lettered", "expired", "deduplicated", "consumers", "samples")

    def __init__(self) -> None:
        self.sent = self.acked = self.redelivered = self.dead_lettered = self.expired = self.deduplicated = 0
        self.consumers = 0
        self.samples: deque[tuple[float, int, int]] = deque(maxlen=64)


_counts: dict[tuple[str, str], Counts] = {}
counts_lock = threading.Lock()


class Queue:
    """What a core knows of one queue: a stream of its own, or (``group``) a durable group's consumer of the
    topic stream, which ringbus names ``@<group>`` like every backend."""

    __slots__ = ("name", "options", "stream", "root", "dead_letter", "counts", "group", "pattern", "ack_wait",
                 "beats")

    def __init__(self, name: str, options: QueueOptions, stream: str, root: str, counts: Counts,
                 group: str | None = None, pattern: str | None = None) -> None:
        self.name = name
        self.options = options
        self.stream = stream
        self.root = root
        self.dead_letter = options.dead_letter_queue(name)
        self.counts = counts
        self.group = group
        self.pattern = pattern
        # JetStream's ack wait is the visibility timeout up to HEARTBEAT_WINDOW; a longer one is kept by the
        # holder's in-progress acks, so the messages of a consumer that died come back within seconds.
        self.ack_wait = min(options.visibility_timeout, HEARTBEAT_WINDOW)
        self.beats = options.visibility_timeout > self.ack_wait

    def lease(self) -> float:
        """When a delivery made now stops being its receiver's (monotonic)."""
        timeout = self.options.visibility_timeout
        return time.monotonic() + timeout - (0.0 if self.beats else lease_margin(timeout))


class Delivery:
    """One delivered message and what settling it needs. ``state``: open, settled or expired."""

    __slots__ = ("message", "queue", "level", "reply", "payload", "headers", "lease", "state", "consumer")

    def __init__(self, message: Message, queue: Queue, level: str, msg: Msg, lease: float, consumer: str) -> None:
        self.message = message
        self.queue = queue
        self.level = level
        self.reply: str = msg.reply
        self.payload: bytes = msg.data
        self.headers: dict[str, str] | None = msg.headers
        self.lease = lease
        self.state = "open"
        self.consumer = consumer


def _backoff(servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
    """nats-py's reconnect hook: the first server, after a doubling delay with jitter (capped)."""
    tries = min((server.reconnects for server in servers), default=0)
    delay = min(RECONNECT_CAP, RECONNECT_FIRST * (2 ** min(tries, 16)))
    return servers[0], delay * (0.5 + random.random() / 2)


def nak_delay(delay: float) -> bytes:
    return b"-NAK " + _json({"delay": int(delay * 1e9)})


class CoreBase:
    """Connection, names, queue lookup and settling; see the module docstring.

    Parameters
    ----------
    url : str
        ``nats://[user:password@]host:port[,host:port...]?prefix=name.`` (``tls://`` too).
    prefix : str or None
        Subject prefix of every subject and stream this core uses (the query's ``prefix`` when None; default
        ``ringbus.``).
    timeout : float
        Seconds to wait for NATS to answer one request before :class:`ringbus.PeerGone`.
    retention : int
        Publications the topic stream keeps for ``start="earliest"`` replay.
    """

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float = 10.0,
                 retention: int = 100_000) -> None:
        parts = urlsplit(url)
        found = [value for name, value in parse_qsl(parts.query) if name == "prefix"]
        self.prefix = wire.check_prefix(prefix if prefix is not None else (found[-1] if found else DEFAULT_PREFIX))
        if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
            raise ValueError(f"retention must be an int >= 1, got {retention!r}")
        self.retention = retention
        self.timeout = timeout
        netlocs = parts.netloc.split(",") if parts.netloc else ["127.0.0.1:4222"]
        self.servers = [urlunsplit((parts.scheme, netloc, "", "", "")) for netloc in netlocs]
        self.where = ",".join(netloc.rpartition("@")[2] for netloc in netlocs)
        self.server_key = f"{self.where}|{self.prefix}"
        self.stream_prefix = (self.prefix + "q.").replace(".", "~")
        self.topic_root = self.prefix + "t."
        self.topic_stream = (self.prefix + "topics").replace(".", "~")
        self.bodies = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.prefix) + "ringbus-bodies"
        self.nc = Client()
        self.js = JetStream(self.nc, timeout, self.where)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._queues: dict[str, Queue] = {}
        self._open: set[Delivery] = set()
        self._acks: deque[Delivery] = deque()
        self._ack_flush = False
        self._unconfirmed: dict[tuple[str, str], str] = {}  # consumer -> ack subject of its last plain ack
        self._object_store: Any = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._expiring: list[tuple[float, int, str, str]] = []  # heap: (expiry, seq, queue, level)
        self._made: set[tuple[str, str]] = set()  # (stream, consumer) this core made or found
        self._dedup_ready = False
        self._topics_ready = False

    # -- connection -------------------------------------------------------------------------------------------
    async def open(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.nc.connect(
                servers=self.servers, name="ringbus", connect_timeout=max(1, round(min(self.timeout, 5.0))),
                max_reconnect_attempts=-1, reconnect_to_server_handler=_backoff, ping_interval=20,
                max_outstanding_pings=3, error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected), self.timeout)
        except (OSError, asyncio.TimeoutError, nats_errors.Error) as exc:
            await self._quietly_close()
            raise PeerGone(f"cannot connect to NATS at {self.where}: {type(exc).__name__}: {exc}") from None
        await self.js.start()
        self._heartbeat = asyncio.create_task(self._heartbeats())

    async def _heartbeats(self) -> None:
        """Keep the deliveries held here alive at NATS (``+WPI``) until their visibility timeout: NATS then
        redelivers them one ack wait (at most HEARTBEAT_WINDOW) after this process stops, not after the timeout."""
        while not self._closed:
            await asyncio.sleep(HEARTBEAT_EVERY)
            now = time.monotonic()
            with self._lock:
                held = [d.reply for d in self._open if d.queue.beats and d.lease > now]
            try:
                for reply in held:
                    await self.nc.publish(reply, b"+WPI")
            except nats_errors.Error as exc:  # reconnecting: the next turn tries again
                log.debug("in-progress acks not sent to %s: %r", self.where, exc)

    async def _quietly_close(self) -> None:
        try:
            await self.nc.close()
        except Exception:  # noqa: BLE001 - closing a connection that never opened
            pass

    async def _on_error(self, exc: Exception) -> None:
        log.debug("nats at %s: %r", self.where, exc)

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("lost the connection to NATS at %s; reconnecting", self.where)
            self.js.abandon_pulls()

    async def _on_reconnected(self) -> None:
        log.warning("reconnected to NATS at %s", self.where)

    async def flush(self) -> None:
        """Wait until NATS has read everything sent so far (a PING answered); nats-py takes whole seconds."""
        await self.nc.flush(timeout=max(1, round(self.timeout)))

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
            await self._before_close()
            for task in (self._heartbeat, self._sweeper):
                if task is not None:
                    task.cancel()
            await asyncio.wait_for(self.nc.flush(), self.timeout)
        except (nats_errors.Error, asyncio.TimeoutError, OSError) as exc:
            log.warning("could not give back the unsettled messages of %s (they come back after their "
                        "visibility timeout): %r", self.where, exc)
        await self._quietly_close()

    async def _before_close(self) -> None:
        """What a subclass ends before the connection closes."""

    # -- names and queues -------------------------------------------------------------------------------------
    def stream_of(self, name: str) -> str:
        return self.stream_prefix + wire.token(name)

    def root_of(self, name: str) -> str:
        return f"{self.prefix}q.{wire.token(name)}"

    def counts(self, name: str) -> Counts:
        key = (self.server_key, name)
        counts = _counts.get(key)
        if counts is None:
            with counts_lock:
                counts = _counts.setdefault(key, Counts())
        return counts

    def remember(self, name: str, options: QueueOptions, group: str | None = None,
                 pattern: str | None = None) -> Queue:
        if group is None:
            queue = Queue(name, options, self.stream_of(name), self.root_of(name), self.counts(name))
        else:
            queue = Queue(name, options, self.topic_stream, "", self.counts(name), group, pattern)
        self._queues[name] = queue
        return queue

    def forget(self, name: str) -> None:
        self._queues.pop(name, None)

    async def record_of(self, name: str) -> dict[str, Any]:
        """The ringbus record (options) kept in the description of queue ``name``'s stream; NotFound without."""
        try:
            config = await self.js.stream_config(self.stream_of(name))
        except ApiError as exc:
            if exc.err_code in NOT_FOUND_CODES:
                raise NotFound(f"queue {name!r} was not declared (declare_queue first)") from None
            raise
        try:
            record = _unjson(config.get("description") or "")
            assert isinstance(record, dict) and record.get("queue") == name
        except (msgspec.DecodeError, AssertionError):
            raise ValueError(f"JetStream stream {self.stream_of(name)!r} was not made by ringbus (its description "
                             "holds no ringbus queue record); use another queue name or prefix") from None
        return record

    async def queue(self, name: str) -> Queue:
        """The queue ``name`` (looked up in NATS once per core); NotFound if it was never declared."""
        queue = self._queues.get(name)
        if queue is not None:
            return queue
        try:
            record = await self.record_of(name)
        except NotFound:
            if name.startswith("@"):
                group = await self.group_of(name)
                if group is not None:
                    return group
            raise
        return self.remember(name, QueueOptions(**record["options"]))

    async def group_of(self, name: str) -> Queue | None:
        """The durable group ``name`` (``@<group>``) if its consumer exists; None if not."""
        try:
            info = await self.js.consumer_info(self.topic_stream, wire.group_consumer(name[1:]))
        except ApiError as exc:
            if exc.err_code in NOT_FOUND_CODES:
                return None
            raise
        pattern = _unjson((info.config or {}).get("description") or "{}").get("pattern")
        return self.remember(name, QueueOptions(), group=name[1:], pattern=pattern)

    async def publish_to(self, queue: Queue, subject: str, payload: bytes,
                         headers: dict[str, str] | None) -> wire.PubAck:
        """A JetStream publish into ``queue``'s stream: NotFound if the stream is gone, RingbusError if refused."""
        try:
            return await self.js.publish(subject, payload, headers)
        except nats_errors.NoRespondersError:
            self.forget(queue.name)
            await self.record_of(queue.name)  # NotFound if the stream is gone ...
            try:  # ... else JetStream was busy (e.g. recovering after a restart): once more
                return await self.js.publish(subject, payload, headers)
            except nats_errors.NoRespondersError:
                raise PeerGone(f"JetStream at {self.where} did not take the message for queue {queue.name!r} "
                               "(no responders)") from None
        except ApiError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise
            raise RingbusError(f"NATS refused the message for queue {queue.name!r}: {exc.description}") from None

    # -- large bodies -----------------------------------------------------------------------------------------
    async def payload_of(self, message: Message, headers: dict[str, str]) -> bytes:
        """The message's payload; a body that would pass NATS's max_payload goes to the object store (its name
        in the ``Rb-Body`` header)."""
        payload = wire.pack(message)
        if len(payload) + 512 <= self.nc.max_payload:
            return payload
        store = await self.object_store()
        name = f"{message.id}-{random.getrandbits(32)}"
        await store.put(name, bytes(message.body))
        headers[wire.H_BODY] = name
        return wire.pack(_replace(message, body=b""))

    async def object_store(self) -> Any:
        if self._object_store is None:
            from nats.js.api import ObjectStoreConfig

            js = self.nc.jetstream(timeout=self.timeout)
            self._object_store = await js.create_object_store(self.bodies, ObjectStoreConfig(bucket=self.bodies))
        return self._object_store

    async def _drop_body(self, delivery: Delivery) -> None:
        """After the final ack of a message: its body in the object store, if any, is no longer needed."""
        headers = delivery.headers
        if headers and wire.H_BODY in headers:
            try:
                await (await self.object_store()).delete(headers[wire.H_BODY])
            except Exception:  # noqa: BLE001 - a leftover body costs space, not correctness
                log.warning("could not delete the stored body %r", headers[wire.H_BODY])

    # -- settling ---------------------------------------------------------------------------------------------
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

    def hold(self, delivery: Delivery) -> None:
        """Count ``delivery`` as handed out (given back at close unless settled)."""
        with self._lock:
            if self._closed:
                raise Closed(f"the nats bus at {self.where} is closed")
            self._open.add(delivery)

    async def confirm(self, reply: str, body: bytes = b"+ACK") -> None:
        """Settle a delivery and wait until JetStream has done it (an ack with a reply)."""
        await self.js.request(reply, body)

    async def ack(self, delivery: Delivery) -> None:
        self.take(delivery, "ack")
        await self.confirm(delivery.reply)
        with counts_lock:
            delivery.queue.counts.acked += 1
        await self._drop_body(delivery)

    def ack_soon(self, delivery: Delivery) -> None:
        """Ack without waiting (any thread): sent by the loop soon; :meth:`sync_acks` waits until NATS did them."""
        self.take(delivery, "ack")
        with counts_lock:
            delivery.queue.counts.acked += 1
        with self._lock:
            self._acks.append(delivery)
            if self._ack_flush:
                return
            self._ack_flush = True
        loop = self.loop
        assert loop is not None
        loop.call_soon_threadsafe(lambda: loop.create_task(self._send_acks()))

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
            self._unconfirmed[(delivery.queue.stream, delivery.consumer)] = delivery.reply
            await self._drop_body(delivery)

    async def sync_acks(self) -> None:
        """Wait until JetStream has processed every ack sent without waiting: it handles one consumer's acks in
        order, so a confirmed repeat of the last ack (a no-op by then) answers after all of them."""
        await self._send_acks()
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        for reply in unconfirmed.values():
            try:
                await self.confirm(reply)
            except (PeerGone, nats_errors.Error) as exc:
                log.warning("NATS at %s did not confirm acks: %r", self.where, exc)

    async def nack(self, delivery: Delivery, requeue: bool, delay: float | None) -> None:
        self.take(delivery, "nack")
        if not requeue:
            await self.dead(delivery, "nacked")
        elif delivery.message.attempts + 1 >= delivery.queue.options.max_attempts:
            await self.dead(delivery, "max_attempts")
        elif delivery.queue.group is not None:  # the topic stream is shared: a group's message is nak'd, not moved
            await self.confirm(delivery.reply, nak_delay(delay) if delay else b"-NAK")
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
        await self.publish_to(queue, subject, wire.pack(message), headers or None)
        await self.confirm(delivery.reply)

    async def reject(self, delivery: Delivery) -> None:
        self.take(delivery, "reject")
        await self.dead(delivery, "rejected")

    async def dead(self, delivery: Delivery, reason: str) -> None:
        """Copy the message to its dead-letter queue with the reason, then ack it."""
        await self.letter(delivery.queue, delivery.payload, delivery.headers, reason)
        await self.confirm(delivery.reply)

    async def letter(self, queue: Queue, payload: bytes, headers: dict[str, str] | None, reason: str) -> None:
        """Publish a message of ``queue`` (as stored) to its dead-letter queue, with the reason and a fresh
        attempt count, and count it dead."""
        message = wire.unpack(payload)
        letter = _replace(message, headers={**message.headers, wire.DEAD_REASON: reason, wire.DEAD_FROM: queue.name},
                          attempts=0)
        kept = {wire.H_BODY: headers[wire.H_BODY]} if headers and wire.H_BODY in headers else None
        try:
            target = await self.queue(queue.dead_letter)
            await self.publish_to(target, f"{target.root}.{message.priority}", wire.pack(letter), kept)
            with counts_lock:
                target.counts.sent += 1
        except PeerGone:
            raise
        except RingbusError as exc:  # NotFound too: the dead-letter queue was deleted
            log.warning("dropped a dead letter of queue %r: %s", queue.name, exc)
        with counts_lock:
            queue.counts.dead_lettered += 1
            if reason == "expired":
                queue.counts.expired += 1

    async def release(self, deliveries: list[Delivery]) -> None:
        """Give back deliveries never handed out (a consume loop's leftovers) without counting an attempt: put
        back at the end of their level as they were, then acked (a nak would count one, and leave them in flight
        until delivered again). A durable group's messages are nak'd (the topic stream is shared)."""
        mine = []
        for delivery in deliveries:
            with self._lock:
                if delivery.state != "open":
                    continue
                delivery.state = "settled"
                self._open.discard(delivery)
            mine.append(delivery)
        await asyncio.gather(*(self._give_back(delivery) for delivery in mine))

    async def _give_back(self, delivery: Delivery) -> None:
        queue = delivery.queue
        if queue.group is not None:
            await self.nc.publish(delivery.reply, b"-NAK")
            return
        headers = dict(delivery.headers or {})
        headers.pop(wire.H_MSG_ID, None)
        message = wire.unpack(delivery.payload)
        message.attempts = delivery.message.attempts
        await self.publish_to(queue, f"{queue.root}.{delivery.level}", wire.pack(message), headers or None)
        await self.confirm(delivery.reply)
        with counts_lock:
            queue.counts.redelivered -= 1 if delivery.message.attempts else 0
