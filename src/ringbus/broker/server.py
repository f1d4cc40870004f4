"""The embedded broker: one ZeroMQ ROUTER, one thread, queues on the native core, a durable log on disk.

Each turn of the loop takes every command waiting on the socket (up to
``BATCH``), applies them to the books, appends what changed to the log,
commits once (the fsync policy decides what that costs) and only then sends
the replies: a confirmed send is on disk (``always``/``batch``) or in the OS
(``never``). Many clients sending at once share one fsync - group commit.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from ringbus.broker.log import SegmentedLog, Storage
from ringbus.broker.majordomo import Majordomo
from ringbus.broker.metrics import MetricsServer, SnapshotExchange, broker_snapshot
from ringbus.broker.protocol import (
    ERR,
    EVENT,
    OK,
    SIGNATURE,
    Command,
    batch_frames,
    error_payload,
    pack,
    split_batch,
    unpack,
)
from ringbus.broker.queues import Delivery, Queue, QueueBook
from ringbus.broker.store import Store
from ringbus.broker.topics import TopicBook
from ringbus.bus import QueueOptions, check_name, check_seconds
from ringbus.codec import decode, encode
from ringbus.errors import NotFound, ProtocolError, RingbusError
from ringbus.message import Message
from ringbus.transport._zmq_socket import recv_nowait, send_frames
from ringbus.transport.curve import CurveServer

__all__ = ["Broker", "default_data_dir", "DEFAULT_ENDPOINT"]

log = logging.getLogger("ringbus.broker")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
BATCH = 512  # commands taken per turn before a commit: bounds confirm latency under load
MAX_WAIT = 0.1  # seconds the loop sleeps at most (notices stop() this fast)
MAX_FETCH = 10_000
MDP_HEARTBEAT = 2.5  # seconds; MajordomoWorker's default too
EVENT_BATCH = 256  # events per EVT message to one subscriber
MAX_STUCK = 100_000  # replies waiting for full peers; beyond it they are dropped and counted
STUCK_RETRY = 0.01  # seconds between tries of waiting replies
# Delivery tags on the wire carry a random number of this broker run above TAG_BITS: a queue's own tags start
# at 1 again after a restart, and a settle held from before it must not settle another delivery.
TAG_BITS = 40

_MDP_HEADERS = (b"MDPC01", b"MDPW01")
# Commands that write to the log: refused, with the log's error, once a write or fsync of it failed.
_WRITES = frozenset((Command.SEND, Command.SEND_MANY, Command.PUBLISH, Command.DECLARE, Command.GROUP))
# _reply(confirm=_SETTLE): waits for the fsync like a confirm, but a settle is applied in memory whatever the
# disk does, so a failed log does not turn its reply into an error (the message may come again after a restart).
_SETTLE = 2


def default_data_dir() -> Path:
    """``./ringbus-data`` - the broker keeps its log beside the program that started it."""
    return Path.cwd() / "ringbus-data"


class _Waiter:
    """A FETCH that found nothing and waits (long poll) for a message or its deadline."""

    __slots__ = ("identity", "rid", "queue", "max", "deadline", "session", "done")

    def __init__(self, identity: bytes, rid: bytes, queue: str, max_items: int, deadline: float, session: str) -> None:
        self.identity = identity
        self.rid = rid
        self.queue = queue
        self.max = max_items
        self.deadline = deadline
        self.session = session
        self.done = False


class _Session:
    __slots__ = ("last_seen", "consumers", "subscriptions")

    def __init__(self, now: float) -> None:
        self.last_seen = now
        self.consumers: dict[str, int] = {}
        self.subscriptions: set[int] = set()


class _Subscriber:
    """An ephemeral subscriber: a client's DEALER, fed without blocking (dropped and counted at its HWM).

    A turn's events for one subscriber travel as one EVT message (up to ``EVENT_BATCH`` events), so fan-out
    costs one ZeroMQ send per subscriber per turn, not one per event.
    """

    __slots__ = ("broker", "identity", "token", "dropped", "pending")

    def __init__(self, broker: Broker, identity: bytes, token: bytes) -> None:
        self.broker = broker
        self.identity = identity
        self.token = token
        self.dropped = 0
        self.pending: list[list[Any]] = []

    def deliver(self, message: Message) -> bool:
        if not self.pending:
            self.broker._feeding.append(self)
        self.pending.append(self.broker._encoded(message))
        if len(self.pending) >= EVENT_BATCH:
            self.flush()
        return True  # counted as delivered now; flush() moves what its send loses to the dropped counts

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        counts, inline, frames = batch_frames(pending)
        # The map also tells the subscriber how many it lost here so far (its `dropped` counts them).
        header = pack({"dropped": self.dropped, "frames": counts, "inline": inline})
        if not self.broker._send([self.identity, SIGNATURE, EVENT, self.token, header, *frames], reply=False):
            self.dropped += len(pending)
            self.broker.topics.delivered -= len(pending)
            self.broker.topics.dropped += len(pending)


class Broker:
    """The embedded broker; run it in a thread (:meth:`start`) or in the foreground (:meth:`serve_forever`).

    Parameters
    ----------
    data : path, optional
        Directory of the durable log; default ``./ringbus-data``. One broker per directory (it is locked).
    bind : str
        ZeroMQ endpoint: ``tcp://127.0.0.1:5555`` by default, ``tcp://127.0.0.1:0`` for a free port,
        ``ipc:///path/to/socket``.
    fsync : {"always", "batch", "never"}
        ``always``: fsync before each send's confirm; ``batch``: one fsync per turn of the loop for every send in
        it (group commit); ``never``: confirmed sends are in the OS page cache (they survive the broker's crash,
        not the machine's).
    heartbeat : float
        Seconds between client heartbeats; a client silent for ``liveness`` of them is gone and its unsettled
        messages are delivered again.
    retention_seconds, retention_bytes : float, int
        How long and how much topics keep their publications for a durable group that starts at "earliest".
    peer_hwm : int
        Messages queued towards one client before more are refused: an ephemeral subscriber that falls this
        far behind loses what follows (counted in its ``dropped``), so a slow subscriber costs bounded memory.
    storage : Storage, optional
        The log's file operations (tests pass one that injects disk faults).
    metrics : bool
        Keep latency histograms per queue (``latency_ms`` in STATS; docs/observability.md). On by default.
    metrics_port, metrics_host : int or None, str
        Serve Prometheus ``/metrics`` on ``http://metrics_host:metrics_port`` (0: a free port; see
        ``metrics_url``); None (default) serves none. Needs prometheus-client.
    curve : ringbus.transport.CurveServer, optional
        Encrypt every connection with CURVE and admit only the clients whose public keys it lists (connect with
        ``ringbus.connect(url, curve=CurveClient(...))``; docs/broker.md, "Security"). A CurveServer cannot be
        made without authorised keys, so a CURVE broker never admits just anyone. Without ``context`` the
        broker gets a ZeroMQ context of its own (one ZAP authenticator per context).
    """

    def __init__(self, data: str | os.PathLike[str] | None = None, bind: str = DEFAULT_ENDPOINT, *,
                 fsync: str = "batch", heartbeat: float = 1.0, liveness: int = 3,
                 segment_bytes: int = 64 * 1024 * 1024, max_message: int = 64 * 1024 * 1024,
                 retention_seconds: float = 24 * 3600.0, retention_bytes: int = 64 * 1024 * 1024,
                 peer_hwm: int = 100_000, context: zmq.Context[Any] | None = None,
                 storage: Storage | None = None, metrics: bool = True, metrics_port: int | None = None,
                 metrics_host: str = "127.0.0.1", curve: CurveServer | None = None) -> None:
        if fsync not in ("always", "batch", "never"):
            raise ValueError(f"fsync must be 'always', 'batch' or 'never', got {fsync!r}")
        check_seconds("heartbeat", heartbeat, allow_zero=False)
        self.data = Path(data) if data is not None else default_data_dir()
        self.bind_address = bind
        self.fsync = fsync
        self.heartbeat = float(heartbeat)
        self.liveness = int(liveness)
        self._segment_bytes = segment_bytes
        self._retention = (float(retention_seconds), int(retention_bytes))
        if isinstance(peer_hwm, bool) or not isinstance(peer_hwm, int) or peer_hwm < 1:
            raise ValueError(f"peer_hwm must be an int >= 1, got {peer_hwm!r}")
        self._peer_hwm = peer_hwm
        self._max_message = max_message
        self._storage = storage
        if metrics_port is not None and (isinstance(metrics_port, bool) or not isinstance(metrics_port, int)
                                         or not 0 <= metrics_port <= 65535):
            raise ValueError(f"metrics_port must be a TCP port from 0 to 65535 or None, got {metrics_port!r}")
        self.metrics = bool(metrics)
        self._metrics_address = (metrics_host, metrics_port)
        self._exporter: MetricsServer | None = None
        self.metrics_url: str | None = None  # http://host:port/metrics once started with a metrics_port
        if curve is not None and not isinstance(curve, CurveServer):
            raise TypeError(f"curve must be a ringbus.transport.CurveServer or None, not {type(curve).__name__}")
        self._curve = curve
        self._own_context = zmq.Context() if curve is not None and context is None else None
        self._context = context or self._own_context or zmq.Context.instance()
        self._auth: Any = None  # the CURVE authenticator (ZAP handler) while serving
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.endpoint = bind
        self.counters: dict[str, int] = dict.fromkeys(
            ("commands", "malformed", "unknown_command", "errors", "undeliverable", "sessions_expired",
             "confirms", "stale_settles"), 0)
        self.recovered: dict[str, int] = {}

    # -- lifetime ---------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Broker:
        """Run in a daemon thread; return once it recovered its log and listens. Raises if it could not start."""
        self._thread = threading.Thread(target=self._run_thread, name="ringbus-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RingbusError(f"broker did not start within {timeout} s")
        if self._failure is not None:
            raise self._failure
        return self

    def _run_thread(self) -> None:
        try:
            self.serve_forever()
        except BaseException as exc:  # surfaced by start(); logged for a broker that was already up
            self._failure = exc
            if self._ready.is_set():
                log.exception("broker stopped on an error")
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (pending confirms are sent) and close the log; idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the loop thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the loop thread to end; True if it did."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def __enter__(self) -> Broker:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop ---------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Recover the log, bind, and serve until :meth:`stop` (or SIGINT in the foreground)."""
        self._log = SegmentedLog(self.data, fsync=self.fsync, segment_bytes=self._segment_bytes,
                                 max_record=self._max_message + 64 * 1024, storage=self._storage)
        try:
            self._setup()
            self._ready.set()
            self._loop()
        finally:
            try:
                self._store.flush()
                self._log.commit()
            except (RingbusError, AttributeError):  # AttributeError: stopped before the store existed
                pass
            self._log.close()
            if self._exporter is not None:
                self._exporter.close()
            socket = getattr(self, "_socket", None)
            if socket is not None:
                socket.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            if self._own_context is not None:
                self._own_context.term()

    def _setup(self) -> None:
        self._ready_queues: set[str] = set()  # before recovery: recovering may make queues ready
        self._waiters: dict[str, deque[_Waiter]] = {}
        self._waiter_deadlines: list[tuple[float, int, _Waiter]] = []
        self._waiter_ids = itertools.count()
        self._store = Store(self._log)
        self.queues = QueueBook(journal=self._store, on_ready=self._on_ready, metrics=self.metrics)
        self.topics = TopicBook(self.queues, on_publish=self._store.published, retention_seconds=self._retention[0],
                                retention_bytes=self._retention[1], encode=encode)
        self._store.topics = self.topics
        self.recovered = self._store.recover(self.queues, self.topics)
        self._log.commit()
        log.info("broker recovered %s from %s", self.recovered, self.data)
        self._tag_run = (int.from_bytes(os.urandom(3), "big") >> 2 | 1) << TAG_BITS  # below 2**62: any int64
        self._sessions: dict[str, _Session] = {}
        self._subscribers: dict[bytes, tuple[int, str, _Subscriber]] = {}  # token -> (book token, session, it)
        self._encoded_cache: tuple[Message | None, list[Any]] = (None, [])
        self._outbox: list[tuple[list[Any], bool | int]] = []  # (frames, confirm: False, True or _SETTLE)
        self._stuck: list[list[Any]] = []  # replies that met a full peer; sent again each turn
        self._feeding: list[_Subscriber] = []  # ephemeral subscribers with events to send this turn
        socket = self._socket = self._context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or vanished peer raises instead of dropping silently
        socket.setsockopt(zmq.MAXMSGSIZE, self._max_message + 64 * 1024)  # refuse a huge frame before allocating
        socket.setsockopt(zmq.SNDHWM, self._peer_hwm)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        if self._curve is not None:
            self._auth = self._curve.start_authenticator(self._context)
            self._curve.apply(socket)
        socket.bind(self.bind_address)
        self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        host, port = self._metrics_address
        if port is not None:
            self._exporter = MetricsServer(SnapshotExchange(), port, host)
            self.metrics_url = self._exporter.url
        # MDP peers of others' making beat every 2.5 s (the zguide's default) whatever our own clients do.
        self.majordomo = Majordomo(self._send_mdp, heartbeat_interval=MDP_HEARTBEAT, liveness=3)
        self._handlers: dict[bytes, Callable[[bytes, bytes, dict[str, Any], list[Any]], None]] = {
            Command.HELLO: self._hello, Command.DECLARE: self._declare, Command.SEND: self._send_one,
            Command.SEND_MANY: self._send_many, Command.FETCH: self._fetch, Command.ACK: self._ack,
            Command.NACK: self._nack, Command.REJECT: self._reject, Command.RELEASE: self._release,
            Command.PUBLISH: self._publish, Command.SUBSCRIBE: self._subscribe, Command.UNSUBSCRIBE: self._unsubscribe,
            Command.SUBSCRIPTION: self._subscription,
            Command.GROUP: self._group, Command.CONSUMERS: self._consumers, Command.STATS: self._stats,
            Command.QUEUES: self._queues, Command.BROKER: self._broker_stats, Command.HEARTBEAT: self._heartbeat,
            Command.BYE: self._bye,
        }

    def _loop(self) -> None:
        socket = self._socket
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        next_expiry_check = 0.0
        exchange = self._exporter.exchange if self._exporter is not None else None
        while not self._stop.is_set():
            wait = self._next_wait()
            if poller.poll(int(wait * 1000.0)):  # milliseconds, as pyzmq would truncate them
                for _ in range(BATCH):
                    frames = recv_nowait(socket)
                    if frames is None:
                        break
                    self._dispatch(frames)
            if self._stuck:
                self._retry_stuck()
            self.queues.tick()
            self._serve_waiters()
            self._flush_events()
            if exchange is not None and exchange.wanted:  # a scrape of /metrics waits for this turn's numbers
                exchange.publish(broker_snapshot(self.queues.queues, time.monotonic(), self._broker_numbers()))
            now = time.monotonic()
            if self._waiter_deadlines and self._waiter_deadlines[0][0] <= now:
                self._expire_waiters(now)  # every turn: a short receive timeout is answered on time
            if now >= next_expiry_check:
                next_expiry_check = now + min(self.heartbeat, 0.5)
                self._expire_sessions(now)
                self.majordomo.tick()
            self._commit()

    def _next_wait(self) -> float:
        wait = STUCK_RETRY if self._stuck else MAX_WAIT
        timer = self.queues.tick()
        if timer is not None:
            wait = min(wait, timer)
        if self._waiter_deadlines:
            wait = min(wait, max(0.0, self._waiter_deadlines[0][0] - time.monotonic()))
        return wait

    def _commit(self) -> None:
        outbox, self._outbox = self._outbox, []
        # Replies that promise nothing about the disk (deliveries, stats, errors) go out before the fsync;
        # confirms after it. Only a turn with a confirm pays for an fsync: a settle or delivery record lost
        # with the machine means a redelivery or an attempt uncounted, never a loss.
        # A failed log refuses the commit below at once: confirms become errors, everything else goes out.
        failed_before = self._log.failed
        confirms: list[tuple[list[Any], bool | int]] = [(frames, confirm) for frames, confirm in outbox if confirm]
        try:
            self._store.flush()
            # Written before any reply leaves (a client that saw a reply knows its earlier commands reached at
            # least the OS), fsynced only if a confirm waits for it.
            self._log.commit(sync=False)
            for frames, confirm in outbox:
                if not confirm:
                    self._send(frames)
            outbox = confirms
            if confirms:
                self._log.commit()
        except RingbusError as exc:
            # Nothing written since the last good commit may be confirmed: every pending confirm becomes an error.
            if not failed_before:
                log.error("log commit failed; refusing sends from now on: %s", exc)
            failed = error_payload(exc)
            outbox = [(frames[:2] + [ERR, frames[3], failed], False) if confirm is True else (frames, confirm)
                      for frames, confirm in outbox]
        else:
            self._store.after_commit()
        for frames, confirm in outbox:
            self.counters["confirms"] += bool(confirm)
            self._send(frames)

    def _send(self, frames: list[Any], *, reply: bool = True) -> bool:
        """Send without blocking. At a peer's high-water mark an event is dropped (False); a reply waits in
        ``_stuck`` and is tried again each turn - a lagging subscriber's events must not cost it a confirm."""
        try:
            send_frames(self._socket, frames)
            return True
        except zmq.Again:  # that peer is at its high-water mark
            if reply and len(self._stuck) < MAX_STUCK:
                self._stuck.append(frames)
                return True
            self.counters["undeliverable"] += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:  # the peer went away
                self.counters["undeliverable"] += 1
                return False
            raise

    def _send_mdp(self, frames: list[bytes]) -> None:
        self._send(frames)

    def _retry_stuck(self) -> None:
        stuck, self._stuck = self._stuck, []
        for frames in stuck:
            self._send(frames)

    def _flush_events(self) -> None:
        feeding, self._feeding = self._feeding, []
        for subscriber in feeding:
            subscriber.flush()

    def _dispatch(self, frames: list[bytes]) -> None:
        self.counters["commands"] += 1
        if len(frames) < 2:
            self.counters["malformed"] += 1
            return
        identity = frames[0]
        if frames[1] == SIGNATURE and len(frames) >= 5:
            command, rid = frames[2], frames[3]
            handler = self._handlers.get(command)
            if handler is None:
                self.counters["unknown_command"] += 1
                self._reply_error(identity, rid, ProtocolError(f"unknown command {command[:32]!r}"))
                return
            try:
                if command in _WRITES:
                    self._log.check_writable()  # a failed log: the error names the disk's problem
                args = unpack(frames[4])
                handler(identity, rid, args, frames[5:])
            except (RingbusError, ValueError, TypeError, KeyError, IndexError) as exc:
                if isinstance(exc, (ProtocolError, KeyError, IndexError)):
                    self.counters["malformed"] += 1
                else:
                    self.counters["errors"] += 1
                self._reply_error(identity, rid, exc if not isinstance(exc, (KeyError, IndexError))
                                  else ProtocolError(f"missing or malformed argument: {exc}"))
        elif frames[1] == b"" and len(frames) >= 3 and frames[2] in _MDP_HEADERS:
            self.majordomo.handle(identity, frames[1:])
        else:
            self.counters["malformed"] += 1

    def _reply(self, identity: bytes, rid: bytes, payload: dict[str, Any], *frames: Any,
               confirm: bool | int = False) -> None:
        if not rid:
            return
        # Every reply waits for the turn's commit; a confirm (the record it answers is in the log) must.
        self._outbox.append(([identity, SIGNATURE, OK, rid, pack(payload), *frames], confirm))

    def _reply_error(self, identity: bytes, rid: bytes, exc: BaseException) -> None:
        if rid:
            self._outbox.append(([identity, SIGNATURE, ERR, rid, error_payload(exc)], False))

    def _encoded(self, message: Message) -> list[Any]:
        cached, frames = self._encoded_cache
        if cached is not message:
            frames = encode(message)
            self._encoded_cache = (message, frames)
        return frames

    # -- sessions ---------------------------------------------------------------------------------------------
    def _session(self, name: object) -> _Session:
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"session must be a non-empty string, got {name!r}")
        now = time.monotonic()
        session = self._sessions.get(name)
        if session is None:
            session = self._sessions[name] = _Session(now)
        session.last_seen = now
        return session

    def _hello(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        self._session(args["session"])
        # "run" changes with each start: a client that reconnects learns whether this broker knows its consumers.
        self._reply(identity, rid, {"version": 1, "heartbeat": self.heartbeat, "liveness": self.liveness,
                                    "run": self._tag_run >> TAG_BITS})

    def _heartbeat(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        self._session(args["session"])

    def _bye(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        name = args["session"]
        if name in self._sessions:
            self._end_session(name)
        self._reply(identity, rid, {})

    def _expire_sessions(self, now: float) -> None:
        horizon = now - self.heartbeat * self.liveness
        for name in [n for n, s in self._sessions.items() if s.last_seen < horizon]:
            self.counters["sessions_expired"] += 1
            self._end_session(name)

    def _end_session(self, name: str) -> None:
        session = self._sessions.pop(name)
        released = self.queues.release(name)
        for queue_name, count in session.consumers.items():
            queue = self.queues.queues.get(queue_name)
            if queue is not None:
                queue.consumers = max(0, queue.consumers - count)
        for token in [t for t, (_, owner, _) in self._subscribers.items() if owner == name]:
            book_token = self._subscribers.pop(token)[0]
            self.topics.remove(book_token)
        for waiters in self._waiters.values():
            for waiter in waiters:
                if waiter.session == name and not waiter.done:
                    waiter.done = True
                    self._deliver(waiter.identity, waiter.rid, [])  # if it is still there, it hears at once
        if released:
            log.info("session %s ended with %d unsettled message(s); they are queued again", name, released)

    # -- queues -----------------------------------------------------------------------------------------------
    def _declare(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        name = check_name("queue", args["name"])
        options = QueueOptions(**args.get("options", {}))
        queue, new = self.queues.declare(name, options)
        if new:
            self._store.declared(name, options, None)
        self._reply(identity, rid, {"created": new}, confirm=True)

    def _message(self, frames: list[Any]) -> Message:
        if not frames:
            raise ProtocolError("a message was expected after the arguments frame")
        return decode(frames)

    def _send_one(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        message = self._message(frames)
        delay = check_seconds("delay", args.get("delay"))
        ttl = check_seconds("ttl", args.get("ttl"), allow_zero=False)
        mid = self.queues.send(args["queue"], message, delay=delay, ttl=ttl, dedup_id=args.get("dedup_id"),
                               wire=frames)
        self._reply(identity, rid, {"id": mid}, confirm=True)
        if self.fsync == "always":
            self._commit()

    def _send_many(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        queue = args["queue"]
        self.queues.get(queue)
        # All decoded first: one bad message refuses the whole batch.
        pieces = [(decode(wire), wire) for wire in split_batch(args["frames"], args.get("inline", []), frames)]
        send = self.queues.send
        ids = [send(queue, message, wire=wire) for message, wire in pieces]
        self._reply(identity, rid, {"ids": ids}, confirm=True)
        if self.fsync == "always":
            self._commit()

    def _fetch(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        queue = args["queue"]
        session = args["session"]
        self._session(session)
        max_items = args.get("max", 1)
        if not isinstance(max_items, int) or not 1 <= max_items <= MAX_FETCH:
            raise ValueError(f"max must be an int from 1 to {MAX_FETCH}, got {max_items!r}")
        wait = check_seconds("wait", args.get("wait", 0.0)) or 0.0
        delivered = self.queues.fetch(queue, session, max_items)
        if delivered or wait <= 0.0:
            self._deliver(identity, rid, delivered)
            return
        waiter = _Waiter(identity, rid, queue, max_items, time.monotonic() + wait, session)
        self._waiters.setdefault(queue, deque()).append(waiter)
        heapq.heappush(self._waiter_deadlines, (waiter.deadline, next(self._waiter_ids), waiter))

    def _deliver(self, identity: bytes, rid: bytes, delivered: list[Delivery]) -> None:
        counts, inline, out = batch_frames([wire or encode(message) for _, message, wire in delivered])
        tags = [self._tag_run | tag for tag, _, _ in delivered]
        self._reply(identity, rid, {"tags": tags, "frames": counts, "inline": inline}, *out)

    def _on_ready(self, queue: Queue) -> None:
        if queue.name in self._waiters:
            self._ready_queues.add(queue.name)

    def _serve_waiters(self) -> None:
        if not self._ready_queues:
            return
        ready, self._ready_queues = self._ready_queues, set()
        for name in ready:
            waiters = self._waiters.get(name)
            while waiters:
                waiter = waiters[0]
                if waiter.done:
                    waiters.popleft()
                    continue
                try:
                    delivered = self.queues.fetch(name, waiter.session, waiter.max)
                except NotFound:
                    delivered = []
                if not delivered:
                    break
                waiters.popleft()
                waiter.done = True
                self._deliver(waiter.identity, waiter.rid, delivered)
            if not waiters:
                self._waiters.pop(name, None)

    def _expire_waiters(self, now: float) -> None:
        deadlines = self._waiter_deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, waiter = heapq.heappop(deadlines)
            if not waiter.done:
                waiter.done = True
                self._deliver(waiter.identity, waiter.rid, [])
        for name in [n for n, w in self._waiters.items() if all(x.done for x in w)]:
            del self._waiters[name]

    def _settle_args(self, args: dict[str, Any]) -> tuple[str, list[int]]:
        tags = args.get("tags", [args.get("tag")])
        if not isinstance(tags, list) or not all(isinstance(t, int) for t in tags):
            raise ProtocolError(f"tags must be a list of ints, got {tags!r}")
        run = self._tag_run
        # A tag of another run becomes 0, which no delivery has: stale.
        return args["queue"], [t ^ run if t >> TAG_BITS == run >> TAG_BITS else 0 for t in tags]

    def _ack(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        self._settle_each(identity, rid, args, self.queues.ack)

    def _nack(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        delay = check_seconds("delay", args.get("delay"))
        requeue = bool(args.get("requeue", True))
        self._settle_each(identity, rid, args, lambda q, tag: self.queues.nack(q, tag, requeue=requeue, delay=delay))

    def _reject(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        self._settle_each(identity, rid, args, self.queues.reject)

    def _settle_each(self, identity: bytes, rid: bytes, args: dict[str, Any],
                     settle: Callable[[str, int], None]) -> None:
        """Apply ``settle`` to every tag; a stale tag (lease ran out) is counted and does not stop the rest."""
        queue, tags = self._settle_args(args)
        self.queues.get(queue)
        stale = 0
        for tag in tags:
            try:
                settle(queue, tag)
            except RingbusError:
                stale += 1
        self.counters["stale_settles"] += stale
        self._reply(identity, rid, {"stale": stale}, confirm=_SETTLE)

    def _release(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        self._settle_each(identity, rid, args, self.queues.unfetch)

    def _consumers(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        session = self._session(args["session"])
        queue = self.queues.get(args["queue"])
        delta = 1 if args.get("delta", 1) > 0 else -1
        held = session.consumers.get(queue.name, 0)
        if delta < 0 and held <= 0:
            return
        session.consumers[queue.name] = held + delta
        queue.consumers += delta
        self._reply(identity, rid, {})

    def _stats(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        stats = self.queues.stats(args["queue"])
        self._reply(identity, rid, dict(stats.__dict__))

    def _queues(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        self._reply(identity, rid, {"queues": [n for n in self.queues.names() if not n.startswith("@")]})

    def _broker_stats(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        queues = {name: dict(self.queues.stats(name).__dict__) for name in self.queues.names()}
        self._reply(identity, rid, {"queues": queues, **self._broker_numbers()})

    def _broker_numbers(self) -> dict[str, Any]:
        """The broker-wide part of the BROKER reply (and of a /metrics snapshot)."""
        return {
            "topics": self.topics.stats(), "services": self.majordomo.stats(),
            "log": {k: v for k, v in self._log.stats().items() if isinstance(v, (int, float, str, bool))},
            "counters": {**self.counters, "unlogged": self._store.unlogged,
                         "dropped_dead_letters": self.queues.dropped_dead_letters},
            "sessions": len(self._sessions), "recovered": self.recovered,
            "data": str(self.data), "fsync": self.fsync,
        }

    # -- topics -----------------------------------------------------------------------------------------------
    def _publish(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        topic = args["topic"]
        if "frames" not in args:
            self._reply(identity, rid, {"id": self.topics.publish(topic, self._message(frames))}, confirm=True)
            return
        messages = [decode(wire) for wire in split_batch(args["frames"], args.get("inline", []), frames)]
        self._reply(identity, rid, {"ids": [self.topics.publish(topic, m) for m in messages]}, confirm=True)

    def _subscribe(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        session = args["session"]
        self._session(session)
        token = os.urandom(8)
        subscriber = _Subscriber(self, identity, token)
        book_token = self.topics.add(args["pattern"], args.get("group"), subscriber)
        self._subscribers[token] = (book_token, session, subscriber)
        self._reply(identity, rid, {"token": token})

    def _subscription(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        held = self._subscribers.get(args["token"])
        if held is None:
            raise NotFound("no such subscription (it ended, or its session expired)")
        self._reply(identity, rid, {"dropped": held[2].dropped})

    def _unsubscribe(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        held = self._subscribers.pop(args["token"], None)
        if held is not None:
            self.topics.remove(held[0])
        self._reply(identity, rid, {})

    def _group(self, identity: bytes, rid: bytes, args: dict[str, Any], frames: list[Any]) -> None:
        group = check_name("subscription group", args["group"])
        pattern = args["pattern"]
        start = args.get("start", "latest")
        options = QueueOptions()
        name, new = self.topics.durable_group(pattern, group, start, options)
        if new:
            self._store.declared(name, options, pattern)
        self._reply(identity, rid, {"queue": name}, confirm=True)
