"""``tcp://`` and ``ipc://`` for asyncio: a native client of the embedded broker on the event loop.

The protocol is the sync :class:`ringbus.backends.broker.BrokerBus`'s (docs/protocol.md, "Broker"), from the
same pieces: the frame helpers of :mod:`ringbus.broker.protocol`, :mod:`ringbus.codec`, its heartbeat thread,
its ack batching constants. What differs is the waiting: one DEALER socket whose ZMQ_FD the loop watches
(``loop.add_reader``, the mechanism zmq.asyncio is built on, without a future per message: measured, its
futures made a round trip cost about twice the sync client's CPU); a reader callback matches replies to the
futures of the calls awaiting them (by request id) and feeds ephemeral subscriptions; a housekeeping task
sends held acks and fails calls the broker never answered. Any number of tasks may send, receive and consume
at once on one bus; their commands share the socket. Request-reply uses zmq.asyncio sockets (Majordomo).

Cancellation: a FETCH (receive, consume) whose task is cancelled is not forgotten: when its reply comes, the
deliveries in it are given back at once with RELEASE (not counted as an attempt). A consume iterator that
ends (cancelled, closed, finished) releases what it had fetched and not handed out.

Broker restarts are ridden as by the sync client, with the same pieces (:mod:`ringbus.backends._broker_session`):
jittered reconnect backoff; a monitor socket, also watched by the loop, fails the calls waiting on a dropped
connection at once with :class:`ringbus.PeerGone` (a consume loop just asks again); on reconnecting, a
consuming session says HELLO, and a broker of a new run hears again of its consume loops (``CONS``) and
ephemeral subscriptions. A FETCH given up on (timed out, dropped) is remembered: if its reply still comes, its
deliveries are released at once. Settles held from before a restart reach the new run as stale.

Heartbeats come from the sync client's thread (a socket of its own), so a busy event loop is not taken for a
dead consumer; requests and ``serve`` speak Majordomo (:mod:`ringbus.aio._mdp`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import zmq
import zmq.asyncio

from ringbus.aio import _mdp
from ringbus.aio._base import (
    AsyncBus,
    AsyncHandler,
    AsyncMessage,
    AsyncSubscription,
    Body,
    Credit,
    check_handler,
    claim,
    idle_left,
    loop_guard,
    unwrap,
)
from ringbus.backends._broker_session import (
    CONNECTION_EVENTS,
    DROPPED,
    BrokerSession,
    GivenUp,
    Heartbeat,
    reconnect_with_backoff,
)
from ringbus.backends._common import NO_SETTLE, as_message
from ringbus.backends.broker import ACK_BATCH, ACK_HOLD, FETCH_GRACE, SEND_CHUNK, SUBSCRIBER_BUFFER
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
from ringbus.bus import Overflow, QueueOptions, QueueStats, Start, check_name, check_seconds, check_topic
from ringbus.codec import decode, encode
from ringbus.errors import Closed, PeerGone, RingbusError
from ringbus.message import HeaderValue, Message, new_id
from ringbus.transport._zmq_socket import recv_nowait, send_frames

__all__ = ["AsyncBrokerBus"]

log = logging.getLogger("ringbus.aio.broker")

TICK = ACK_HOLD  # seconds between housekeeping rounds: held acks never wait longer than about twice this
EXPIRY_EVERY = 10  # housekeeping rounds between looks for calls the broker never answered
BACKLOG_FIRST, BACKLOG_MAX = 0.001, 0.05  # seconds between tries to send commands held at the high-water mark
LONG_POLL = 1.0  # seconds a FETCH waits at the broker at most: a closed bus is noticed, no request waits for ever
_rid = struct.Struct(">Q").pack
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's enums cost on every read

Reply = tuple[dict[str, Any], list[bytes]]
Orphan = Callable[[dict[str, Any]], None]  # takes the reply of a FETCH nobody awaits any more, to give it back


class _Pending:
    """A call waiting for its reply; ``orphan`` takes the reply if it comes after the caller was cancelled."""

    __slots__ = ("future", "deadline", "orphan")

    def __init__(self, future: asyncio.Future[Reply], deadline: float, orphan: Orphan | None) -> None:
        self.future = future
        self.deadline = deadline
        self.orphan = orphan


class _Settle:
    """The settle handle of one delivery (sync ``message.ack()`` works too, from any thread)."""

    __slots__ = ("bus", "queue", "tag", "done", "credit")

    def __init__(self, bus: AsyncBrokerBus, queue: str, tag: int, credit: Credit | None) -> None:
        self.bus = bus
        self.queue = queue
        self.tag = tag
        self.done = False
        self.credit = credit

    def _settle(self, command: bytes, args: dict[str, Any]) -> None:
        if self.done:
            raise RingbusError(f"cannot settle delivery {self.tag} of queue {self.queue!r} again: already settled")
        bus = self.bus
        if bus._closed:
            raise Closed(f"cannot settle a message of queue {self.queue!r}: its bus {bus.url!r} is closed "
                         "(the broker delivers it again)")
        self.done = True
        if threading.get_ident() == bus._thread:
            bus._settle_here(command, args, self.queue, self.tag, self.credit)
        else:  # the socket belongs to the loop's thread
            assert bus._loop is not None
            bus._loop.call_soon_threadsafe(bus._settle_here, command, args, self.queue, self.tag, self.credit)

    def ack(self, message: Message) -> None:
        self._settle(Command.ACK, {"tags": [self.tag]})

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self._settle(Command.NACK, {"tags": [self.tag], "requeue": requeue, "delay": delay})

    def reject(self, message: Message) -> None:
        self._settle(Command.REJECT, {"tags": [self.tag]})


class _Subscription(AsyncSubscription):
    def __init__(self, bus: AsyncBrokerBus, pattern: str, group: str | None, durable: bool) -> None:
        self.pattern = pattern
        self.group = group
        self.durable = durable
        self._bus = bus
        self._closed = False
        self._dropped = 0
        self._broker_dropped = 0
        self._buffer: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._queue = ""
        self._token = b""

    async def _start(self, start: Start) -> _Subscription:
        bus = self._bus
        if self.durable:
            payload, _ = await bus._call(Command.GROUP, {"pattern": self.pattern, "group": self.group,
                                                         "start": start})
            self._queue = payload["queue"]
        else:
            await bus._start_heartbeat()
            payload, _ = await bus._call(Command.SUBSCRIBE, {"pattern": self.pattern, "group": self.group,
                                                             "session": bus._session})
            self._token = payload["token"]
            bus._subscriptions[self._token] = self
        return self

    def _events(self, messages: list[Message], dropped_at_broker: int) -> None:
        self._broker_dropped = max(self._broker_dropped, dropped_at_broker)
        for message in messages:
            if len(self._buffer) >= SUBSCRIBER_BUFFER:
                self._dropped += 1
                continue
            message._settle = NO_SETTLE
            self._buffer.append(message)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self, timeout: float | None = None) -> AsyncMessage | None:
        if self._closed:
            raise Closed("subscription is closed")
        if self.durable:
            return await self._bus.receive(self._queue, timeout)
        timeout = check_seconds("timeout", timeout)
        if not self._buffer and timeout != 0.0:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            handle = None if timeout is None else loop.call_later(timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if handle is not None:
                    handle.cancel()
        if self._closed:
            raise Closed("subscription is closed")
        return AsyncMessage(self._buffer.popleft()) if self._buffer else None

    @property
    def dropped(self) -> int:
        """Lost here (our buffer was full) and at the broker, as it last reported along with a message."""
        return self._dropped + self._broker_dropped

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        bus = self._bus
        if not self.durable:
            bus._subscriptions.pop(self._token, None)
            if not bus._closed:
                await bus._call(Command.UNSUBSCRIBE, {"token": self._token})


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _readable(sock: zmq.Socket[Any]) -> bool:
    return bool(sock.get(_EVENTS) & _POLLIN)  # type: ignore[operator]  # EVENTS is an int


def _error(payload: dict[str, Any]) -> BaseException:
    try:
        raise_error(payload)
    except Exception as exc:  # noqa: BLE001 - the exception an ERR reply describes, to hand to a future
        return exc
    return RingbusError("the broker refused the request")  # pragma: no cover - raise_error always raises


class AsyncBrokerBus(AsyncBus):
    """An :class:`AsyncBus` on the embedded broker at ``tcp://host:port`` or ``ipc:///path``.

    Parameters
    ----------
    url : str
        The broker's endpoint.
    timeout : float
        Seconds to wait for the broker to answer a command before raising :class:`ringbus.PeerGone`.
    hwm : int
        Messages this connection queues each way (ZeroMQ high-water mark).
    context : zmq.Context, optional
        The (sync) ZeroMQ context to share; default ``zmq.Context.instance()``.
    """

    unsupported_features: frozenset[str] = frozenset()

    def __init__(self, url: str, *, timeout: float = 30.0, hwm: int = 100_000,
                 context: zmq.Context[Any] | None = None) -> None:
        self.url = url
        self._timeout: float = check_seconds("timeout", timeout, allow_zero=False)
        if isinstance(hwm, bool) or not isinstance(hwm, int) or hwm < 1:
            raise ValueError(f"hwm must be an int >= 1, got {hwm!r}")
        self._sync_context = context or zmq.Context.instance()
        self._context = zmq.asyncio.Context(shadow=self._sync_context)  # for the Majordomo sockets
        self._socket: zmq.Socket[Any] = self._sync_context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, hwm)
        self._socket.setsockopt(zmq.RCVHWM, hwm)
        reconnect_with_backoff(self._socket)
        self._monitor: zmq.Socket[Any] = self._socket.get_monitor_socket(CONNECTION_EVENTS)
        self._session = new_id()
        self._rids = itertools.count(1)
        # The connection's drops and returns, the broker's run, the consume loops to announce again.
        self._link = BrokerSession(self._session, url, self._rids, self._send, self._notify)
        self._given_up: GivenUp[Orphan] = GivenUp()  # FETCHes given up on: their late replies are given back
        self._socket.connect(url)
        self._fd: int = self._socket.getsockopt(zmq.FD)
        self._monitor_fd: int = self._monitor.getsockopt(zmq.FD)
        self._read_soon = False  # a read of the socket is scheduled
        self._backlog: deque[list[Any]] = deque()  # commands waiting for room under the high-water mark
        self._backlog_retry = 0.0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[bytes, _Pending] = {}
        self._subscriptions: dict[bytes, _Subscription] = {}
        self._held_acks: dict[str, list[int]] = {}
        self._held_since: float | None = None
        self._hello: asyncio.Future[None] | None = None
        self._heartbeat: Heartbeat | None = None
        self._mdp = _mdp.MdpClients(self._context, url)

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _start(self) -> None:
        """Check the bus is open and used from its loop; on first use, start the reader and housekeeper."""
        if self._closed:
            raise Closed(f"bus {self.url!r} is closed")
        if self._loop is None:
            loop = self._loop = loop_guard(None, self.url)
            self._thread = threading.get_ident()
            loop.add_reader(self._fd, self._on_readable)
            loop.add_reader(self._monitor_fd, self._on_connection_events)
            loop.call_soon(self._on_connection_events)  # events of before the reader (ZMQ_FD is edge-triggered)
            self._tasks = [loop.create_task(self._housekeep(), name=f"ringbus-aio-housekeep {self.url}")]
        elif asyncio.get_running_loop() is not self._loop:
            loop_guard(self._loop, self.url)

    async def open(self) -> AsyncBrokerBus:
        self._start()
        return self

    def _send(self, frames: list[Any]) -> None:
        if self._backlog:  # behind others waiting for room: keep the order
            self._backlog.append(frames)
            return
        try:
            send_frames(self._socket, frames)
        except zmq.Again:  # at the high-water mark: sent, in order, as room appears
            self._backlog.append(frames)
            self._backlog_retry = BACKLOG_FIRST
            assert self._loop is not None
            self._loop.call_later(self._backlog_retry, self._send_backlog)
        self._check_readable()

    def _send_backlog(self) -> None:
        backlog = self._backlog
        try:
            while backlog:
                send_frames(self._socket, backlog[0])
                backlog.popleft()
        except zmq.Again:
            self._backlog_retry = min(2 * self._backlog_retry, BACKLOG_MAX)
            assert self._loop is not None
            self._loop.call_later(self._backlog_retry, self._send_backlog)
        except zmq.ZMQError:  # the bus closed meanwhile
            backlog.clear()
        self._check_readable()

    def _check_readable(self) -> None:
        """ZMQ_FD is edge-triggered: a send may take in a reply without the descriptor signalling it again."""
        if not self._read_soon and _readable(self._socket):
            self._read_soon = True
            assert self._loop is not None
            self._loop.call_soon(self._on_readable)

    def _notify(self, command: bytes, args: dict[str, Any]) -> None:
        """A command that wants no reply (settles, consumer counts, BYE)."""
        self._send([SIGNATURE, command, b"", pack(args)])

    def _settle_here(self, command: bytes, args: dict[str, Any], queue: str, tag: int,
                     credit: Credit | None) -> None:
        if self._closed:
            return  # closed meanwhile: BYE gave it back
        if credit is not None:
            credit.settled()
        if command is Command.ACK and credit is not None:
            self._hold_ack(queue, tag)  # a consume loop's acks travel together
        else:
            args["queue"] = queue
            self._notify(command, args)

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
        if self._held_acks:
            held, self._held_acks, self._held_since = self._held_acks, {}, None
            for queue, tags in held.items():
                self._notify(Command.ACK, {"queue": queue, "tags": tags})

    def _release(self, queue: str, tags: list[int]) -> None:
        """Give back deliveries nobody will see (prefetched, or fetched for a cancelled call): not an attempt."""
        if tags and not self._closed:
            self._notify(Command.RELEASE, {"queue": queue, "tags": tags})

    def _request(self, command: bytes, args: dict[str, Any], frames: Iterable[Any], timeout: float | None,
                 orphan: Orphan | None) -> tuple[bytes, asyncio.Future[Reply]]:
        """Send a command; its request id and the future of its reply (failed with PeerGone after ``timeout``)."""
        self._start()
        if _readable(self._monitor):
            self._on_connection_events()  # a drop seen before this request must not fail it
        self._flush_settles()  # held acks go before anything that may depend on them (a key's next message)
        rid = _rid(next(self._rids))
        assert self._loop is not None
        future: asyncio.Future[Reply] = self._loop.create_future()
        self._pending[rid] = _Pending(future, time.monotonic() + (self._timeout if timeout is None else timeout),
                                      orphan)
        try:
            self._send([SIGNATURE, command, rid, pack(args), *frames])
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return rid, future

    async def _call(self, command: bytes, args: dict[str, Any], frames: Iterable[Any] = (),
                    timeout: float | None = None) -> Reply:
        """Send a command and await its reply; PeerGone if none comes within ``timeout`` (default: the bus's)."""
        rid, future = self._request(command, args, frames, timeout, None)
        try:
            return await future
        except asyncio.CancelledError:
            self._pending.pop(rid, None)  # nothing to give back: a late reply is dropped
            raise

    def _on_readable(self) -> None:
        """Take everything the socket holds (called by the loop when ZMQ_FD signals, or after a send)."""
        self._read_soon = False
        if self._closed:
            return
        sock, on_frames = self._socket, self._on_frames
        try:
            while _readable(sock):  # reading EVENTS re-arms the descriptor's edge (and costs less than Again)
                frames = recv_nowait(sock)
                if frames is not None:
                    on_frames(frames)
        except zmq.ZMQError:  # the socket closed under us
            return

    def _on_frames(self, frames: list[bytes]) -> None:
        try:
            if len(frames) < 4 or frames[0] != SIGNATURE:
                log.warning("dropped a malformed reply of %d frame(s) from %s", len(frames), self.url)
                return
            status, rid = frames[1], frames[2]
            if status == EVENT:
                subscription = self._subscriptions.get(rid)
                if subscription is not None:
                    batch = unpack(frames[3])
                    wires = split_batch(batch.get("frames"), batch.get("inline", []), frames[4:])
                    subscription._events([decode(wire) for wire in wires], int(batch.get("dropped", 0)))
                return
            pending = self._pending.pop(rid, None)
            if pending is None:
                if not self._link.answered(rid, status, frames):  # a request of the session's, after a reconnect
                    self._late_reply(rid, status, frames)
                return
            payload = unpack(frames[3])
            future = pending.future
            if future.done():  # its caller was cancelled
                if status == OK and pending.orphan is not None:
                    pending.orphan(payload)
            elif status == OK:
                future.set_result((payload, frames[4:]))
            elif status == ERR:
                future.set_exception(_error(payload))
            else:
                future.set_exception(RingbusError(f"the broker answered with an unknown status {status[:16]!r}"))
        except Exception:  # noqa: BLE001 - one bad reply must not stop the reader
            log.exception("dropped a reply from %s that could not be handled", self.url)

    async def _housekeep(self) -> None:
        rounds = 0
        while not self._closed:
            await asyncio.sleep(TICK)
            since = self._held_since
            if since is not None and time.monotonic() - since >= ACK_HOLD:
                self._flush_settles()
            rounds += 1
            if rounds % EXPIRY_EVERY == 0 and self._pending:
                self._expire(time.monotonic())

    def _late_reply(self, rid: bytes, status: bytes, frames: list[bytes]) -> None:
        """The reply to a call given up on: a FETCH's deliveries go back at once (nobody will settle them)."""
        orphan = self._given_up.pop(rid)
        if orphan is not None and status == OK:
            orphan(unpack(frames[3]))

    def _give_up(self, rid: bytes) -> asyncio.Future[Reply]:
        """Stop waiting for a reply; a FETCH's, if it still comes, is given back. Returns the call's future."""
        pending = self._pending.pop(rid)
        if pending.orphan is not None:
            self._given_up.add(rid, pending.orphan)  # a broker that got it after all may still deliver to it
        return pending.future

    def _on_connection_events(self) -> None:
        """Follow the connection: calls waiting on a dropped one fail at once (PeerGone; a consume loop just
        asks again); when it comes back, a consuming session says HELLO, and a restarted broker hears of its
        consumers and ephemeral subscriptions again."""
        if self._closed:
            return
        try:
            for change in self._link.connection_changes(self._monitor):
                if change is DROPPED:
                    for rid in list(self._pending):
                        future = self._give_up(rid)
                        if not future.done():
                            future.set_exception(self._link.lost())
                else:
                    self._link.hello_again(self._heartbeat, self._subscriptions)
        except zmq.ZMQError:  # the bus closed under us
            return

    @property
    def reconnects(self) -> int:
        """Times the connection to the broker dropped and came back."""
        return self._link.reconnects

    def _expire(self, now: float) -> None:
        for rid in [rid for rid, pending in self._pending.items() if pending.deadline <= now]:
            future = self._give_up(rid)
            if not future.done():
                future.set_exception(PeerGone(
                    f"the broker at {self.url} did not answer in time (is `ringbus broker` running there?); "
                    "the request may or may not have taken effect"))

    async def _start_heartbeat(self) -> None:
        if self._heartbeat is not None:
            return
        if self._hello is None:
            self._hello = asyncio.ensure_future(self._say_hello())
        hello = self._hello
        try:
            await asyncio.shield(hello)
        except Exception:
            if self._hello is hello:
                self._hello = None  # let the next call try again
            raise

    async def _say_hello(self) -> None:
        # The broker decides how often it expects to hear from us.
        payload, _ = await self._call(Command.HELLO, {"session": self._session})
        if self._heartbeat is None and not self._closed:
            self._link.run = payload.get("run")
            self._heartbeat = Heartbeat(self._sync_context, self.url, self._session,
                                         float(payload.get("heartbeat", 1.0)))
            self._heartbeat.start()

    # -- queues -----------------------------------------------------------------------------------------------
    async def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                            overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                            visibility_timeout: float = 30.0, ordered_by_key: bool = False,
                            ttl: float | None = None, dedup_window: float = 300.0) -> None:
        self._start()
        check_name("queue", name)
        options = QueueOptions(durable=durable, max_length=max_length, overflow=overflow, dead_letter=dead_letter,
                               max_attempts=max_attempts, visibility_timeout=visibility_timeout,
                               ordered_by_key=ordered_by_key, ttl=ttl, dedup_window=dedup_window)
        await self._call(Command.DECLARE, {"name": name, "options": options.__dict__})

    async def send(self, queue: str, body: Body, *, key: str | None = None, priority: int | None = None,
                   headers: dict[str, HeaderValue] | None = None, delay: float | None = None,
                   ttl: float | None = None, dedup_id: str | None = None) -> str:
        self._start()
        message = as_message(unwrap(body), key=key, priority=priority, headers=headers)
        args: dict[str, Any] = {"queue": queue}
        if delay is not None:
            args["delay"] = check_seconds("delay", delay)
        if ttl is not None:
            args["ttl"] = check_seconds("ttl", ttl, allow_zero=False)
        if dedup_id is not None:
            if not isinstance(dedup_id, str):
                raise TypeError(f"dedup_id must be a str or None, not {type(dedup_id).__name__}")
            args["dedup_id"] = dedup_id
        payload, _ = await self._call(Command.SEND, args, encode(message))
        return payload["id"]  # type: ignore[no-any-return]

    async def send_many(self, queue: str, bodies: Iterable[Body]) -> list[str]:
        """Send in order, in chunks of ``SEND_CHUNK`` that are all in flight at once; not atomic (see the sync
        :meth:`ringbus.backends.broker.BrokerBus.send_many`)."""
        self._start()
        messages = [as_message(unwrap(body)) for body in bodies]
        calls = []
        for start in range(0, len(messages), SEND_CHUNK):
            counts, inline, frames = batch_frames([encode(m) for m in messages[start:start + SEND_CHUNK]])
            calls.append(self._call(Command.SEND_MANY, {"queue": queue, "frames": counts, "inline": inline},
                                    frames))
        ids: list[str] = []
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
            ids.extend(result[0]["ids"])
        return ids

    def _fetch_start(self, queue: str, max_items: int, wait: float) -> asyncio.Future[Reply]:
        """Send a FETCH: up to ``max_items`` deliveries, waiting up to ``wait`` seconds at the broker for the
        first. If the future is cancelled, the deliveries of its reply are given back when it comes."""
        return self._request(Command.FETCH, {"queue": queue, "max": max_items, "wait": wait, "session": self._session},
                             (), wait + min(self._timeout, FETCH_GRACE),
                             lambda late: self._release(queue, late.get("tags", [])))[1]

    async def _fetch_end(self, future: asyncio.Future[Reply], queue: str, credit: Credit | None) -> list[Message]:
        """The deliveries of a FETCH; given back if the awaiting task is cancelled as they come in."""
        try:
            reply = await claim(future, lambda late: self._release(queue, late[0].get("tags", [])))
        except PeerGone:
            if self._closed:
                raise
            return []  # the broker went away mid-poll: the caller asks again
        return self._delivered(reply, queue, credit)

    def _delivered(self, reply: Reply, queue: str, credit: Credit | None) -> list[Message]:
        payload, frames = reply
        messages = []
        wires = split_batch(payload["frames"], payload.get("inline", []), frames)
        for tag, wire in zip(payload["tags"], wires, strict=False):
            message = decode(wire)
            message._settle = _Settle(self, queue, tag, credit)
            messages.append(message)
        return messages

    async def receive(self, queue: str, timeout: float | None = None) -> AsyncMessage | None:
        self._start()
        timeout = check_seconds("timeout", timeout)
        await self._start_heartbeat()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = LONG_POLL if deadline is None else max(0.0, min(LONG_POLL, deadline - time.monotonic()))
            messages = await self._fetch_end(self._fetch_start(queue, 1, wait), queue, None)
            if messages:
                return AsyncMessage(messages[0])
            if deadline is not None and time.monotonic() >= deadline:
                return None

    async def _consume(self, queue: str, prefetch: int,
                       timeout: float | None) -> AsyncGenerator[AsyncMessage, None]:
        await self._start_heartbeat()
        await self._call(Command.STATS, {"queue": queue})  # an unknown queue fails here, at the first iteration
        assert self._loop is not None
        credit = Credit(self._loop)
        buffer: deque[Message] = deque()
        # One FETCH stays in flight while the buffer is handed out (read-ahead), so the broker has a waiter to
        # deliver to the moment messages arrive; fetched and buffered messages count against prefetch.
        ahead: asyncio.Future[Reply] | None = None
        half = (prefetch + 1) // 2
        self._notify(Command.CONSUMERS, {"queue": queue, "delta": 1, "session": self._session})
        self._link.consume_started(queue)
        idle_since = time.monotonic()
        try:
            while not self._closed:
                if buffer:
                    now = time.monotonic()
                    since = self._held_since
                    if since is not None and now - since >= ACK_HOLD:
                        self._flush_settles()  # a handler that never awaits starves the housekeeper
                    if ahead is None and prefetch - credit.outstanding - len(buffer) >= half:
                        ahead = self._fetch_start(queue, prefetch - credit.outstanding - len(buffer), LONG_POLL)
                    credit.outstanding += 1
                    yield AsyncMessage(buffer.popleft())
                    idle_since = time.monotonic()
                    continue
                left = idle_left(timeout, idle_since, time.monotonic())
                if left is not None and left <= 0.0:
                    return
                wait = LONG_POLL if left is None else min(LONG_POLL, left)
                if ahead is None:
                    room = prefetch - credit.outstanding
                    if room <= 0:  # every delivery is with the application: wait for a settle
                        await credit.wait(wait)
                        continue
                    ahead = self._fetch_start(queue, room, wait)
                elif self._held_acks:
                    self._flush_settles()  # the read-ahead may wait for them (the next message of a key)
                fetched, ahead = ahead, None
                buffer.extend(await self._fetch_end(fetched, queue, credit))
        except Closed:
            return
        finally:
            self._link.consume_ended(queue)
            if ahead is not None:  # a read-ahead still out
                if ahead.done() and not ahead.cancelled() and ahead.exception() is None:
                    buffer.extend(self._delivered(ahead.result(), queue, None))
                else:
                    ahead.cancel()  # its reply, when it comes, is given back (the FETCH's orphan handler)
            if not self._closed:
                self._flush_settles()
                self._release(queue, [message._settle.tag for message in buffer])  # fetched, never handed out
                self._notify(Command.CONSUMERS, {"queue": queue, "delta": -1, "session": self._session})

    async def queue_stats(self, queue: str) -> QueueStats:
        payload, _ = await self._call(Command.STATS, {"queue": queue})
        return QueueStats(**payload)

    async def queues(self) -> list[str]:
        payload, _ = await self._call(Command.QUEUES, {})
        return list(payload["queues"])

    async def broker_stats(self) -> dict[str, Any]:
        """Everything the broker counts (see :meth:`ringbus.backends.broker.BrokerBus.broker_stats`)."""
        payload, _ = await self._call(Command.BROKER, {})
        return payload

    # -- topics -----------------------------------------------------------------------------------------------
    async def publish(self, topic: str, body: Body, *, headers: dict[str, HeaderValue] | None = None,
                      key: str | None = None) -> str:
        self._start()
        check_topic(topic)
        message = as_message(unwrap(body), key=key, headers=headers)
        payload, _ = await self._call(Command.PUBLISH, {"topic": topic}, encode(message))
        return payload["id"]  # type: ignore[no-any-return]

    async def publish_many(self, topic: str, bodies: Iterable[Body]) -> list[str]:
        self._start()
        check_topic(topic)
        counts, inline, frames = batch_frames([encode(as_message(unwrap(body))) for body in bodies])
        if not counts:
            return []
        payload, _ = await self._call(Command.PUBLISH, {"topic": topic, "frames": counts, "inline": inline}, frames)
        return payload["ids"]  # type: ignore[no-any-return]

    async def _subscribe(self, pattern: str, group: str | None, durable: bool, start: Start) -> AsyncSubscription:
        return await _Subscription(self, pattern, group, durable)._start(start)

    # -- services (Majordomo) ---------------------------------------------------------------------------------
    async def request(self, service: str, body: Body, *, timeout: float | None = 5.0) -> Message:
        self._start()
        check_name("service", service)
        timeout = check_seconds("timeout", timeout)
        return await self._mdp.request(service, as_message(unwrap(body)), timeout)

    async def serve(self, service: str, handler: AsyncHandler, *, stop: asyncio.Event | None = None) -> None:
        self._start()
        check_name("service", service)
        check_handler(handler)
        await _mdp.serve(self._context, self.url, service, handler, stop, lambda: self._closed)

    # -- lifetime ---------------------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._loop is not None:
                self._flush_settles()
                # Unsettled deliveries go back at once rather than after the heartbeat runs out.
                self._notify(Command.BYE, {"session": self._session})
        except zmq.ZMQError:
            pass
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.stopping.set()  # its thread closes its own socket
        for task in self._tasks:
            task.cancel()
        pending, self._pending = self._pending, {}
        for call in pending.values():
            if not call.future.done():
                call.future.set_exception(Closed(f"bus {self.url!r} was closed while waiting for the broker"))
        for subscription in list(self._subscriptions.values()):
            subscription._closed = True
            subscription._wake()
        self._mdp.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_reader(self._monitor_fd)
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=1000)  # let BYE and the last settles reach the broker

    @property
    def closed(self) -> bool:
        return self._closed
