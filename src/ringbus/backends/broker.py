"""``tcp://`` and ``ipc://``: the Bus as a client of the embedded broker (``ringbus broker``).

One DEALER socket carries commands and their replies (matched by request
id; a late reply to a request given up on is dropped) and the events of
ephemeral subscriptions. A consumer also runs a heartbeat thread with a
socket of its own, so the broker can tell a slow consumer (heart still
beating: its messages wait for their visibility timeout) from a dead one
(silent for ``liveness`` beats: its messages are delivered again at once).
Request-reply speaks Majordomo (RFC 7) to the same endpoint.

When the broker goes away (a crash, a restart) ZeroMQ reconnects on its own,
each socket after its own random first interval, doubling to
``RECONNECT_MAX`` (jittered backoff: a restart does not bring every client
back in the same instant; :mod:`ringbus.backends._broker_session`, shared with
the asyncio client). The bus watches its connection: requests waiting
when it drops fail at once with :class:`ringbus.PeerGone` (a consume loop
just asks again), and on reconnecting it says HELLO; a restarted broker
(a new run) hears again of its consumers and of its ephemeral subscriptions,
without the application doing anything. Delivery tags of the broker's
previous run are stale at the new one.

Like every ZeroMQ socket, a BrokerBus belongs to the thread that made it;
messages it delivered may be settled from any thread (the settle is handed
to the owner thread, which sends it at its next call, or within ``SLICE``
seconds while it waits in receive or consume).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Generator
from typing import Any

import zmq

from ringbus.backends._broker_session import (
    CONNECTION_EVENTS,
    DROPPED,
    BrokerSession,
    GivenUp,
    Heartbeat,
    reconnect_with_backoff,
)
from ringbus.backends._common import NO_SETTLE, as_message, check_prefetch, check_subscription, reply_message
from ringbus.broker.mdp_client import MajordomoClient, MajordomoWorker, ServiceError
from ringbus.broker.protocol import (
    ERR,
    EVENT,
    OK,
    SIGNATURE,
    Command,
    batch_frames,
    pack,
    raise_error,
    split_batch,
    unpack,
)
from ringbus.bus import (
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
from ringbus.codec import decode, encode
from ringbus.errors import Closed, Empty, PeerGone, RingbusError
from ringbus.message import HeaderValue, Message, new_id
from ringbus.transport._zmq_socket import recv_nowait, send_frames
from ringbus.transport.curve import CurveClient

__all__ = ["BrokerBus"]

log = logging.getLogger("ringbus.backends.broker")

SLICE = 0.1  # seconds a wait sleeps before it looks at settles from other threads and at close()
SUBSCRIBER_BUFFER = 10_000
# A consume loop's acks are sent together: when ACK_BATCH are held, when the loop fetches or stops, when any
# other command goes out, and at the latest ACK_HOLD seconds after the first (so a slow handler's earlier
# acks never wait long enough to meet a visibility timeout).
ACK_BATCH = 256
ACK_HOLD = 0.05
SEND_CHUNK = 256  # messages per command of a send_many
FETCH_GRACE = 5.0  # seconds past its wait that a FETCH may take before it is asked again
_LOST: tuple[dict[str, Any], list[bytes]] = ({"__lost__": True}, [])  # a reply that cannot come any more
_rid = struct.Struct(">Q").pack


class _Settle:
    __slots__ = ("bus", "queue", "tag", "done", "consumer")

    def __init__(self, bus: BrokerBus, queue: str, tag: int, consumer: _Consumer | None) -> None:
        self.bus = bus
        self.queue = queue
        self.tag = tag
        self.done = False
        self.consumer = consumer

    def _settle(self, command: bytes, args: dict[str, Any]) -> None:
        if self.done:
            raise RingbusError(f"cannot settle delivery {self.tag} of queue {self.queue!r} again: already settled")
        bus = self.bus
        if bus._closed:
            raise Closed(f"cannot settle a message of queue {self.queue!r}: its bus {bus.url!r} is closed "
                         "(the broker delivers it again)")
        self.done = True
        if self.consumer is not None:
            self.consumer.outstanding -= 1
        if threading.get_ident() != bus._owner:
            args["queue"] = self.queue
            bus._foreign_settles.append((command, args))
            bus._wake()  # the owner may be waiting for exactly this settle (consume at its prefetch)
        elif command is Command.ACK and self.consumer is not None:
            bus._hold_ack(self.queue, self.tag)  # a consume loop's acks travel together
        else:
            args["queue"] = self.queue
            bus._notify(command, args)

    def ack(self, message: Message) -> None:
        self._settle(Command.ACK, {"tags": [self.tag]})

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self._settle(Command.NACK, {"tags": [self.tag], "requeue": requeue, "delay": delay})

    def reject(self, message: Message) -> None:
        self._settle(Command.REJECT, {"tags": [self.tag]})


class _Consumer:
    __slots__ = ("outstanding",)

    def __init__(self) -> None:
        self.outstanding = 0


class _BrokerSubscription(Subscription):
    def __init__(self, bus: BrokerBus, pattern: str, group: str | None, durable: bool, start: Start) -> None:
        self.pattern = pattern
        self.group = group
        self.durable = durable
        self._bus = bus
        self._closed = False
        self._dropped = 0
        self._broker_dropped = 0
        self._buffer: deque[Message] = deque()
        if durable:
            payload, _ = bus._call(Command.GROUP, {"pattern": pattern, "group": group, "start": start})
            self._queue = payload["queue"]
            self._token = b""
        else:
            bus._start_heartbeat()
            payload, _ = bus._call(Command.SUBSCRIBE, {"pattern": pattern, "group": group, "session": bus._session})
            self._token = payload["token"]
            bus._subscriptions[self._token] = self

    def _events(self, messages: list[Message], dropped_at_broker: int) -> None:
        self._broker_dropped = max(self._broker_dropped, dropped_at_broker)
        for message in messages:
            if len(self._buffer) >= SUBSCRIBER_BUFFER:
                self._dropped += 1
                continue
            message._settle = NO_SETTLE
            self._buffer.append(message)

    def receive(self, timeout: float | None = None) -> Message | None:
        if self._closed:
            raise Closed("subscription is closed")
        if self.durable:
            return self._bus.receive(self._queue, timeout)
        timeout = check_seconds("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
            if left <= 0.0:
                return None
            self._bus._pump(left)
            if self._closed:
                raise Closed("subscription is closed")
        return self._buffer.popleft()

    @property
    def dropped(self) -> int:
        """Lost here (our buffer was full) and at the broker (our socket at its high-water mark).

        For an ephemeral subscription this asks the broker (a round trip) from the thread that owns the bus;
        from another thread it gives the last count the broker sent along with a message.
        """
        if not self.durable and not self._closed and threading.get_ident() == self._bus._owner:
            payload, _ = self._bus._call(Command.SUBSCRIPTION, {"token": self._token})
            self._broker_dropped = max(self._broker_dropped, int(payload["dropped"]))
        return self._dropped + self._broker_dropped

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        bus = self._bus
        if not self.durable:
            bus._subscriptions.pop(self._token, None)
            if not bus._closed:
                bus._call(Command.UNSUBSCRIBE, {"token": self._token})


class BrokerBus(Bus):
    """A Bus on the embedded broker at ``tcp://host:port`` or ``ipc:///path``; see the module docstring.

    Parameters
    ----------
    url : str
        The broker's endpoint.
    timeout : float
        Seconds to wait for the broker to answer a command (a confirm, a stats call) before raising
        :class:`ringbus.PeerGone`; the command may or may not have taken effect - resend with a ``dedup_id``.
    hwm : int
        Messages this connection queues each way (ZeroMQ high-water mark). With the broker's ``peer_hwm`` it
        bounds how far an ephemeral subscription may fall behind before the broker drops for it.
    curve : ringbus.transport.CurveClient, optional
        For a broker started with ``curve=CurveServer(...)``: this client's key pair and the broker's public key
        (every socket of the bus, heartbeats and request-reply included, uses them). A broker that does not
        authorise the key, or a client without one, never gets an answer: calls raise PeerGone after ``timeout``.
    """

    unsupported_features: frozenset[str] = frozenset()

    def __init__(self, url: str, *, timeout: float = 30.0, hwm: int = 100_000,
                 context: zmq.Context[Any] | None = None, curve: CurveClient | None = None) -> None:
        if curve is not None and not isinstance(curve, CurveClient):
            raise TypeError(f"curve must be a ringbus.transport.CurveClient or None, not {type(curve).__name__}")
        self._curve = curve
        self.url = url
        self._timeout = check_seconds("timeout", timeout, allow_zero=False)
        self._heartbeat_interval = 1.0  # until the broker's HELLO says otherwise
        self._context = context or zmq.Context.instance()
        self._owner = threading.get_ident()
        self._session = new_id()
        self._closed = False
        self._rids = itertools.count(1)
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        if isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 1:
            raise ValueError(f"hwm must be an int >= 1, got {hwm!r}")
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        reconnect_with_backoff(self._socket)
        if curve is not None:
            curve.apply(self._socket)
        self._monitor = self._socket.get_monitor_socket(CONNECTION_EVENTS)
        # The connection's drops and returns, the broker's run, the consume loops to announce again.
        self._link = BrokerSession(self._session, url, self._rids,
                                   functools.partial(send_frames, self._socket, block=True), self._notify)
        self._socket.connect(url)
        # Settles made in other threads wake the owner through this pipe, polled beside the socket.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._replies: dict[bytes, tuple[dict[str, Any], list[bytes]] | None] = {}
        self._subscriptions: dict[bytes, _BrokerSubscription] = {}
        self._foreign_settles: deque[tuple[bytes, dict[str, Any]]] = deque()
        self._held_acks: dict[str, list[int]] = {}
        self._held_since: float | None = None
        self._abandoned: GivenUp[str] = GivenUp()  # FETCH request id -> its queue
        self._heartbeat: Heartbeat | None = None
        self._mdp_client: MajordomoClient | None = None
        self._workers: list[MajordomoWorker] = []

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"bus {self.url!r} is closed")
        if threading.get_ident() != self._owner:
            raise RingbusError(f"bus {self.url!r} belongs to the thread that opened it; connect one bus per thread")

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None:
            # The broker decides how often it expects to hear from us.
            payload, _ = self._call(Command.HELLO, {"session": self._session})
            self._link.run = payload.get("run")
            interval = float(payload.get("heartbeat", self._heartbeat_interval))
            self._heartbeat = Heartbeat(self._context, self.url, self._session, interval, self._curve)
            self._heartbeat.start()

    def _notify(self, command: bytes, args: dict[str, Any]) -> None:
        """Send a command that wants no reply (settles)."""
        send_frames(self._socket, [SIGNATURE, command, b"", pack(args)], block=True)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):  # a wake-up is pending already, or the bus is closing
            pass

    def _hold_ack(self, queue: str, tag: int) -> None:
        held = self._held_acks.get(queue)
        if held is None:
            held = self._held_acks[queue] = []
            if self._held_since is None:
                self._held_since = time.monotonic()
        held.append(tag)
        if len(held) >= ACK_BATCH:
            self._flush_settles()

    def _flush_settles(self) -> None:
        """Send settles held back: acks of consume loops, and settles made in other threads."""
        if self._held_acks:
            for queue, tags in self._held_acks.items():
                self._notify(Command.ACK, {"queue": queue, "tags": tags})
            self._held_acks = {}
            self._held_since = None
        settles = self._foreign_settles
        while settles:
            self._notify(*settles.popleft())

    def _flush_if_stale(self) -> None:
        since = self._held_since
        if since is not None and time.monotonic() - since >= ACK_HOLD:
            self._flush_settles()

    def _send_command(self, command: bytes, args: dict[str, Any], frames: list[Any]) -> bytes:
        if self._monitor.get(zmq.EVENTS) & zmq.POLLIN:
            self._connection_events()  # a drop seen before this request must not fail it
        self._flush_settles()
        rid = _rid(next(self._rids))
        self._replies[rid] = None
        send_frames(self._socket, [SIGNATURE, command, rid, pack(args), *frames], block=True)
        return rid

    def _pump(self, wait: float) -> None:
        """Receive what arrives within ``wait`` seconds: replies for ``_replies``, events for subscriptions."""
        if self._closed:
            raise Closed(f"bus {self.url!r} is closed")
        socket = self._socket
        ready = dict(self._poller.poll(int(wait * 1000.0)))  # milliseconds, as pyzmq would truncate them
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        if self._monitor in ready:
            self._connection_events()
        if socket not in ready:
            self._flush_settles()
            return
        while True:
            frames = recv_nowait(socket)
            if frames is None:
                break
            if len(frames) < 4 or frames[0] != SIGNATURE:
                log.warning("dropped a malformed reply of %d frame(s) from %s", len(frames), self.url)
                continue
            status, rid = frames[1], frames[2]
            if status == EVENT:
                subscription = self._subscriptions.get(rid)
                if subscription is not None:
                    batch = unpack(frames[3])
                    subscription._events([decode(wire) for wire in split_batch(batch.get("frames"),
                                                                               batch.get("inline", []), frames[4:])],
                                         int(batch.get("dropped", 0)))
                continue
            if self._link.answered(rid, status, frames):  # a request of the session's, after a reconnect
                continue
            if rid not in self._replies:
                self._late_reply(rid, status, frames)
                continue
            payload = unpack(frames[3])
            if status == ERR:
                payload["__error__"] = True
            elif status != OK:
                continue
            self._replies[rid] = (payload, frames[4:])
        self._flush_settles()

    def _wait_reply(self, rid: bytes, timeout: float | None) -> tuple[dict[str, Any], list[bytes]]:
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        try:
            while True:
                reply = self._replies.get(rid)
                if reply is _LOST:
                    raise self._link.lost()
                if reply is not None:
                    payload, frames = reply
                    if payload.pop("__error__", False):
                        raise_error(payload)
                    return payload, frames
                left = deadline - time.monotonic()
                if left <= 0.0:
                    raise PeerGone(f"the broker at {self.url} did not answer within "
                                   f"{self._timeout if timeout is None else timeout:g} s (is `ringbus broker` "
                                   "running there?); the request may or may not have taken effect")
                self._pump(min(left, SLICE))
        finally:
            self._replies.pop(rid, None)

    def _connection_events(self) -> None:
        """Follow the connection: what waits on a dropped one fails; on a new one, tell the broker who we are."""
        for change in self._link.connection_changes(self._monitor):
            if change is DROPPED:
                for rid, reply in self._replies.items():
                    if reply is None:
                        self._replies[rid] = _LOST
            else:
                self._link.hello_again(self._heartbeat, self._subscriptions)

    @property
    def reconnects(self) -> int:
        """Times the connection to the broker dropped and came back."""
        return self._link.reconnects

    def _late_reply(self, rid: bytes, status: bytes, frames: list[Any]) -> None:
        """The reply to a request given up on: deliveries of a FETCH go back at once (nobody will settle them)."""
        queue = self._abandoned.pop(rid)
        if queue is None or status != OK:
            return
        tags = unpack(frames[3]).get("tags")
        if tags:
            self._notify(Command.RELEASE, {"queue": queue, "tags": tags})

    def _call(self, command: bytes, args: dict[str, Any], frames: list[Any] | None = None,
              timeout: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        return self._wait_reply(self._send_command(command, args, frames or []), timeout)

    # -- queues -----------------------------------------------------------------------------------------------
    def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                      overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                      visibility_timeout: float = 30.0, ordered_by_key: bool = False, ttl: float | None = None,
                      dedup_window: float = 300.0) -> None:
        self._check_open()
        check_name("queue", name)
        options = QueueOptions(durable=durable, max_length=max_length, overflow=overflow, dead_letter=dead_letter,
                               max_attempts=max_attempts, visibility_timeout=visibility_timeout,
                               ordered_by_key=ordered_by_key, ttl=ttl, dedup_window=dedup_window)
        self._call(Command.DECLARE, {"name": name, "options": options.__dict__})

    def send(self, queue: str, body: bytes | bytearray | memoryview | Message, *, key: str | None = None,
             priority: int | None = None, headers: dict[str, HeaderValue] | None = None,
             delay: float | None = None, ttl: float | None = None, dedup_id: str | None = None) -> str:
        self._check_open()
        message = as_message(body, key=key, priority=priority, headers=headers)
        args: dict[str, Any] = {"queue": queue}
        if delay is not None:
            args["delay"] = check_seconds("delay", delay)
        if ttl is not None:
            args["ttl"] = check_seconds("ttl", ttl, allow_zero=False)
        if dedup_id is not None:
            if not isinstance(dedup_id, str):
                raise TypeError(f"dedup_id must be a str or None, not {type(dedup_id).__name__}")
            args["dedup_id"] = dedup_id
        payload, _ = self._call(Command.SEND, args, encode(message))
        return payload["id"]  # type: ignore[no-any-return]

    def send_many(self, queue: str, bodies: Any) -> list[str]:
        """Send messages in order, pipelined: chunks of ``SEND_CHUNK`` go out back to back, then their confirms
        are awaited, so encoding here overlaps storing there. Not atomic: if one chunk is refused (say
        ``Full``), chunks before it were accepted."""
        self._check_open()
        messages = [as_message(body) for body in bodies]
        rids = []
        for start in range(0, len(messages), SEND_CHUNK):
            counts, inline, frames = batch_frames([encode(m) for m in messages[start:start + SEND_CHUNK]])
            rids.append(self._send_command(Command.SEND_MANY, {"queue": queue, "frames": counts, "inline": inline},
                                           frames))
        ids: list[str] = []
        failure: BaseException | None = None
        for rid in rids:
            try:
                payload, _ = self._wait_reply(rid, None)
                ids.extend(payload["ids"])
            except (RingbusError, ValueError, TypeError) as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return ids

    def _fetch(self, queue: str, max_items: int, wait: float, consumer: _Consumer | None) -> list[Message]:
        """One FETCH: up to ``max_items`` deliveries, waiting up to ``wait`` seconds at the broker for the first."""
        # A long poll unanswered well past its wait means the broker went away (a restarted broker never saw
        # it): give up on it soon and let the caller ask again, rather than waiting out the command timeout.
        rid = self._send_command(Command.FETCH, {"queue": queue, "max": max_items, "wait": wait,
                                                 "session": self._session}, [])
        try:
            payload, frames = self._wait_reply(rid, wait + min(self._timeout, FETCH_GRACE))
        except PeerGone:
            if self._closed:
                raise
            self._abandoned.add(rid, queue)  # a broker that got it after all may still deliver to it
            return []
        messages = []
        wires = split_batch(payload["frames"], payload.get("inline", []), frames)
        for tag, wire in zip(payload["tags"], wires, strict=True):  # the broker sends a tag per message
            message = decode(wire)
            message._settle = _Settle(self, queue, tag, consumer)
            messages.append(message)
        return messages

    def receive(self, queue: str, timeout: float | None = None) -> Message | None:
        self._check_open()
        timeout = check_seconds("timeout", timeout)
        self._start_heartbeat()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # Long polls of at most a second: a bus closed meanwhile is noticed, and no request waits for ever.
            wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            messages = self._fetch(queue, 1, wait, None)
            if messages:
                return messages[0]
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> Generator[Message, None, None]:
        self._check_open()
        check_prefetch(prefetch)
        timeout = check_seconds("timeout", timeout)
        self._start_heartbeat()
        self._call(Command.STATS, {"queue": queue})  # an unknown queue fails here, not at the first next()
        return self._consume(queue, prefetch, timeout)

    def _consume(self, queue: str, prefetch: int, timeout: float | None) -> Generator[Message, None, None]:
        consumer = _Consumer()
        buffer: deque[Message] = deque()
        self._notify(Command.CONSUMERS, {"queue": queue, "delta": 1, "session": self._session})
        self._link.consume_started(queue)
        idle_since = time.monotonic()
        try:
            while not self._closed:
                if buffer:
                    self._flush_if_stale()
                    consumer.outstanding += 1
                    yield buffer.popleft()
                    idle_since = time.monotonic()
                    continue
                credit = prefetch - consumer.outstanding
                left = None if timeout is None else timeout - (time.monotonic() - idle_since)
                if left is not None and left <= 0.0:
                    return
                wait = 1.0 if left is None else min(1.0, left)
                if credit <= 0:  # every prefetched message is with the application: wait for a settle
                    self._pump(min(wait, SLICE))
                    continue
                buffer.extend(self._fetch(queue, credit, wait, consumer))
        except Closed:
            return
        finally:
            self._link.consume_ended(queue)
            if not self._closed:
                self._flush_settles()
                if buffer:  # prefetched, never seen: back to the queue without counting an attempt
                    tags = [message._settle.tag for message in buffer]
                    self._notify(Command.RELEASE, {"queue": queue, "tags": tags})
                self._notify(Command.CONSUMERS, {"queue": queue, "delta": -1, "session": self._session})

    def queue_stats(self, queue: str) -> QueueStats:
        self._check_open()
        payload, _ = self._call(Command.STATS, {"queue": queue})
        return QueueStats(**payload)

    def queues(self) -> list[str]:
        self._check_open()
        payload, _ = self._call(Command.QUEUES, {})
        return list(payload["queues"])

    def broker_stats(self) -> dict[str, Any]:
        """Everything the broker counts: queues, topics, services, log, malformed input (``ringbus stats``)."""
        self._check_open()
        payload, _ = self._call(Command.BROKER, {})
        return payload

    # -- topics -----------------------------------------------------------------------------------------------
    def publish(self, topic: str, body: bytes | bytearray | memoryview | Message, *,
                headers: dict[str, HeaderValue] | None = None, key: str | None = None) -> str:
        self._check_open()
        check_topic(topic)
        message = as_message(body, key=key, headers=headers)
        payload, _ = self._call(Command.PUBLISH, {"topic": topic}, encode(message))
        return payload["id"]  # type: ignore[no-any-return]

    def publish_many(self, topic: str, bodies: Any) -> list[str]:
        self._check_open()
        check_topic(topic)
        counts, inline, frames = batch_frames([encode(as_message(body)) for body in bodies])
        if not counts:
            return []
        payload, _ = self._call(Command.PUBLISH, {"topic": topic, "frames": counts, "inline": inline}, frames)
        return payload["ids"]  # type: ignore[no-any-return]

    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscription:
        self._check_open()
        check_subscription(pattern, group, durable, start)
        return _BrokerSubscription(self, pattern, group, durable, start)

    # -- services (Majordomo) ---------------------------------------------------------------------------------
    def request(self, service: str, body: bytes | bytearray | memoryview | Message, *,
                timeout: float | None = 5.0) -> Message:
        self._check_open()
        check_name("service", service)
        timeout = check_seconds("timeout", timeout)
        message = as_message(body)
        if self._mdp_client is None:
            self._mdp_client = MajordomoClient(self.url, context=self._context, curve=self._curve)
        frames = [bytes(frame) for frame in encode(message)]
        try:
            reply = self._mdp_client.request(service, *frames, timeout=timeout)
        except ServiceError as exc:
            raise RingbusError(f"service {service!r} failed: {exc}") from None
        except Empty:
            raise Empty(f"no reply from service {service!r} within {timeout} s") from None
        return decode(reply)

    def serve(self, service: str, handler: Handler, *, stop: threading.Event | None = None) -> None:
        self._check_open()
        check_name("service", service)
        worker = MajordomoWorker(self.url, service, context=self._context, curve=self._curve)
        self._workers.append(worker)

        def answer(frames: list[bytes]) -> list[bytes]:
            request = decode(frames)
            return [bytes(frame) for frame in encode(reply_message(request, handler(request)))]

        try:
            worker.serve(answer, stop=stop)
        finally:
            worker.close()
            self._workers.remove(worker)

    # -- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in list(self._workers):
            worker.close()
        try:
            if threading.get_ident() == self._owner:
                self._flush_settles()
                # Unsettled deliveries go back at once rather than after the heartbeat runs out.
                self._socket.send_multipart([SIGNATURE, Command.BYE, b"", pack({"session": self._session})],
                                            zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        if self._heartbeat is not None:
            self._heartbeat.stopping.set()
            self._heartbeat.join(2.0)
        if self._mdp_client is not None and threading.get_ident() == self._owner:
            self._mdp_client.close()
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        if threading.get_ident() == self._owner:
            self._socket.close(linger=1000)  # let BYE and the last settles reach the broker
        else:
            self._socket.close(linger=0)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def closed(self) -> bool:
        return self._closed
