"""What a client of the embedded broker keeps to ride broker restarts; shared by the sync and asyncio clients.

The client's sockets reconnect with jittered backoff (:func:`reconnect_with_backoff`); a monitor socket tells
the client when its connection drops and comes back (:meth:`BrokerSession.connection_changes`). Requests
waiting on a dropped connection fail at once (:meth:`BrokerSession.lost`). On coming back, a client that
consumes says HELLO again (:meth:`BrokerSession.hello_again`): a broker of another run (a restart) forgot its
``CONS`` counts and ephemeral subscriptions, so the client announces them again. A FETCH given up on is
remembered (:class:`GivenUp`), so that its reply, if it still comes, is given back with RELEASE.
"""

from __future__ import annotations

import functools
import random
import struct
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import zmq
from zmq.utils.monitor import recv_monitor_message

from ringbus.broker.protocol import OK, SIGNATURE, Command, pack, unpack
from ringbus.errors import PeerGone
from ringbus.transport.curve import CurveClient

__all__ = ["RECONNECT_MIN", "RECONNECT_MAX", "ABANDONED_FETCHES", "CONNECTION_EVENTS", "DROPPED", "RECONNECTED",
           "reconnect_with_backoff", "Heartbeat", "BrokerSession", "GivenUp"]

# Reconnecting: a socket's first retry comes after a random interval in [RECONNECT_MIN, 3 * RECONNECT_MIN],
# and each further one after twice the last, up to RECONNECT_MAX.
RECONNECT_MIN = 0.1
RECONNECT_MAX = 2.0
ABANDONED_FETCHES = 1024  # given-up FETCHes remembered, so that a late reply's deliveries are given back
# A failed handshake is (almost always) CURVE: a key the broker does not authorise, a wrong server key, or one
# side without CURVE. Followed to say so when the request fails, rather than "dropped".
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
CONNECTION_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | HANDSHAKE_FAILED
DROPPED = "dropped"  # the connection went (or its handshake failed): what waits on it gets no reply
RECONNECTED = "reconnected"  # it came back after having been up once

T = TypeVar("T")
S = TypeVar("S", bound="_Resubscribable")


def reconnect_with_backoff(socket: zmq.Socket[Any]) -> None:
    """Jittered exponential reconnect backoff (libzmq doubles the interval but adds no jitter of its own)."""
    socket.setsockopt(zmq.RECONNECT_IVL, int(random.uniform(RECONNECT_MIN, 3 * RECONNECT_MIN) * 1000))
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, int(RECONNECT_MAX * 1000))


class Heartbeat(threading.Thread):
    """Beats for a session from a socket of its own, so a busy consumer is not taken for dead."""

    def __init__(self, context: zmq.Context[Any], endpoint: str, session: str, interval: float,
                 curve: CurveClient | None = None) -> None:
        super().__init__(name=f"ringbus-heartbeat-{session[:8]}", daemon=True)
        self._context = context
        self._curve = curve
        self._endpoint = endpoint
        self._frames = [SIGNATURE, Command.HEARTBEAT, b"", pack({"session": session})]
        self.interval = interval  # the broker's; a restarted one may say otherwise
        self.stopping = threading.Event()

    def run(self) -> None:
        socket = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 10)
        reconnect_with_backoff(socket)
        if self._curve is not None:
            self._curve.apply(socket)
        socket.connect(self._endpoint)
        try:
            while not self.stopping.is_set():
                try:
                    socket.send_multipart(self._frames, zmq.NOBLOCK)
                except zmq.Again:  # broker unreachable: beats are not worth queueing
                    pass
                self.stopping.wait(self.interval)
        finally:
            socket.close(0)


class _Resubscribable(Protocol):
    pattern: str
    group: str | None
    _token: bytes


Callback = Callable[[dict[str, Any], list[bytes]], None]
_rid = struct.Struct(">Q").pack


class BrokerSession:
    """A client's view of its connection and of the broker's run, and what a restarted broker must hear again.

    Parameters
    ----------
    session, url : str
        The client's session id and the broker's endpoint.
    rids : iterator of int
        The client's request ids (shared with its other requests, so replies never mix).
    send : callable
        Sends a command's frames on the client's socket, in order with its other commands.
    notify : callable
        Sends a command that wants no reply: ``notify(command, args)``.

    The client counts its consume loops here (:meth:`consume_started`, :meth:`consume_ended`), calls
    :meth:`hello_again` when :meth:`connection_changes` says RECONNECTED, and hands each reply it did not ask for
    itself to :meth:`answered`.
    """

    __slots__ = ("session", "url", "connected_once", "handshake_failed", "reconnects", "run", "consuming",
                 "_rids", "_send", "_notify", "_callbacks")

    def __init__(self, session: str, url: str, rids: Iterator[int], send: Callable[[list[Any]], None],
                 notify: Callable[[bytes, dict[str, Any]], None]) -> None:
        self.session = session
        self.url = url
        self.connected_once = False
        self.handshake_failed = False  # the last handshake with the broker failed (CURVE refused or mismatched)
        self.reconnects = 0  # times the connection to the broker dropped and came back
        self.run: object = None  # what the broker's HELLO said of its run (a restart changes it)
        self.consuming: Counter[str] = Counter()  # queue -> consume loops running on it
        self._rids = rids
        self._send = send
        self._notify = notify
        # Requests sent after a reconnect, whose replies are handled as they come (in the client's reader).
        self._callbacks: dict[bytes, Callback] = {}

    def connection_changes(self, monitor: zmq.Socket[Any]) -> Iterator[str]:
        """Read the monitor's pending events: DROPPED or RECONNECTED for each that changes what the client does."""
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            if event == zmq.EVENT_DISCONNECTED:
                yield DROPPED
            elif event & HANDSHAKE_FAILED:
                self.handshake_failed = True
                yield DROPPED
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_failed = False
                again, self.connected_once = self.connected_once, True
                if again:
                    self.reconnects += 1
                    yield RECONNECTED

    def lost(self) -> PeerGone:
        """The error of a request whose connection dropped (or was refused) before the broker answered."""
        if self.handshake_failed:
            return PeerGone(f"the broker at {self.url} refused the connection's security handshake: with "
                            "CURVE, is this client's public key among its authorised keys, and is "
                            "server_public_key the broker's? (or one side has CURVE and the other not)")
        return PeerGone(f"the connection to the broker at {self.url} dropped before it answered (is it "
                        "restarting?); the request may or may not have taken effect")

    def consume_started(self, queue: str) -> None:
        self.consuming[queue] += 1

    def consume_ended(self, queue: str) -> None:
        self.consuming[queue] -= 1
        if not self.consuming[queue]:
            del self.consuming[queue]

    def hello_again(self, heartbeat: Heartbeat | None, subscriptions: dict[bytes, S]) -> None:
        """After a reconnect, a session that consumes (its heartbeat runs) says HELLO; a new run then hears of
        its consume loops and ephemeral ``subscriptions`` again (:meth:`_greeted`)."""
        if heartbeat is None:
            return  # nothing to announce: the broker learns a producer's requests as they come
        self._request(Command.HELLO, {"session": self.session},
                      functools.partial(self._greeted, heartbeat, subscriptions))

    def answered(self, rid: bytes, status: bytes, frames: list[bytes]) -> bool:
        """Take the reply to a request of this session (True), or leave it to the client (False)."""
        callback = self._callbacks.pop(rid, None)
        if callback is None:
            return False
        if status == OK:
            callback(unpack(frames[3]), frames[4:])
        return True

    def _request(self, command: bytes, args: dict[str, Any], callback: Callback) -> None:
        rid = _rid(next(self._rids))
        self._callbacks[rid] = callback
        self._send([SIGNATURE, command, rid, pack(args)])

    def _greeted(self, heartbeat: Heartbeat, subscriptions: dict[bytes, S], payload: dict[str, Any],
                 frames: list[bytes]) -> None:
        """The broker answered a HELLO after a reconnect: if it is a new run, it must hear of our consumers,
        and our ephemeral subscriptions must be made again (what was published in between is missed)."""
        heartbeat.interval = float(payload.get("heartbeat", heartbeat.interval))
        run = payload.get("run")
        if run == self.run:
            return  # the same broker (the connection only blinked): it still knows them
        self.run = run
        for queue, loops in self.consuming.items():
            for _ in range(loops):
                self._notify(Command.CONSUMERS, {"queue": queue, "delta": 1, "session": self.session})
        for token, subscription in list(subscriptions.items()):
            self._request(Command.SUBSCRIBE, {"pattern": subscription.pattern, "group": subscription.group,
                                              "session": self.session},
                          functools.partial(self._resubscribed, subscriptions, token))

    def _resubscribed(self, subscriptions: dict[bytes, S], old: bytes, payload: dict[str, Any],
                      frames: list[bytes]) -> None:
        subscription = subscriptions.pop(old, None)
        if subscription is None:  # closed meanwhile
            self._notify(Command.UNSUBSCRIBE, {"token": payload["token"]})
            return
        subscription._token = payload["token"]
        subscriptions[subscription._token] = subscription


class GivenUp(Generic[T]):
    """Requests given up on (request id -> what their late reply needs), the latest ``ABANDONED_FETCHES``."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: OrderedDict[bytes, T] = OrderedDict()

    def add(self, rid: bytes, value: T) -> None:
        self._items[rid] = value
        if len(self._items) > ABANDONED_FETCHES:
            self._items.popitem(last=False)

    def pop(self, rid: bytes) -> T | None:
        return self._items.pop(rid, None)
