"""Majordomo (RFC 7, MDP/0.1) peers on pyzmq: a client and a worker for the embedded broker or any MDP broker."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import zmq

from ringbus.broker.majordomo import (
    C_CLIENT,
    ERROR_FRAME,
    MMI_FOUND,
    MMI_PREFIX,
    MMI_SERVICE,
    W_DISCONNECT,
    W_HEARTBEAT,
    W_READY,
    W_REPLY,
    W_REQUEST,
    W_WORKER,
    check_count,
    check_seconds,
    log,
)
from ringbus.errors import Closed, Empty, Full, ProtocolError, RingbusError
from ringbus.transport._zmq_socket import _check_endpoint, check_timeout, log_sparsely

if TYPE_CHECKING:
    from typing_extensions import Self

    from ringbus.transport.curve import CurveClient

__all__ = ["MajordomoClient", "MajordomoWorker", "ServiceError"]

Handler = Callable[[list[bytes]], "bytes | Sequence[bytes]"]


class ServiceError(RingbusError):
    """A Majordomo worker's handler failed on the request; the reply said so instead of a body.

    Attributes
    ----------
    service : str
        The service that was asked.
    reason : str
        What the worker reported: the exception's type and message.
    """

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"service {service!r} failed: {reason}")
        self.service = service
        self.reason = reason


def _service_bytes(service: object) -> bytes:
    if isinstance(service, str):
        service = service.encode("utf-8")
    if not isinstance(service, bytes):
        raise TypeError(f"service must be bytes or str, not {type(service).__name__}")
    if not service:
        raise ValueError("service must not be empty")
    return service


def _check_linger(linger: object) -> int:
    if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not 0 <= linger < math.inf:
        raise ValueError(f"linger must be a finite number of seconds >= 0, not {linger!r}")
    return int(round(linger * 1000))


def _check_context(context: object) -> zmq.Context[Any]:
    if context is None:
        return zmq.Context.instance()
    if not isinstance(context, zmq.Context):
        raise TypeError(f"context must be a zmq.Context or None, not {type(context).__name__}")
    return context


def _dealer(context: zmq.Context[Any], endpoint: str, linger_ms: int,
            curve: CurveClient | None = None) -> zmq.Socket[bytes]:
    """A new DEALER connected to the broker (a new routing identity, an empty queue), over CURVE if given."""
    sock: zmq.Socket[bytes] = context.socket(zmq.DEALER)
    try:
        sock.linger = linger_ms
        if curve is not None:
            curve.apply(sock)
        sock.connect(endpoint)
    except BaseException:
        sock.close(0)
        raise
    return sock


def _body_frames(body: object, what: str) -> list[bytes]:
    """A body as a list of frames: one bytes-like object, or a sequence of them."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return [bytes(body)]
    if isinstance(body, (list, tuple)):
        frames = []
        for frame in body:
            if not isinstance(frame, (bytes, bytearray, memoryview)):
                raise TypeError(f"{what} frames must be bytes, not {type(frame).__name__}")
            frames.append(bytes(frame))
        return frames
    raise TypeError(f"{what} must be bytes or a list of bytes, not {type(body).__name__}")


class _Peer:
    """What the client and the worker share: a context-manager life cycle and a repr."""

    _endpoint: str

    @property
    def endpoint(self) -> str:
        """The broker's endpoint."""
        return self._endpoint

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'closed' if self.closed else self._endpoint}>"


class MajordomoClient(_Peer):
    """Ask a Majordomo broker's services (ZeroMQ DEALER speaking MDP/0.1 as a client).

    Parameters
    ----------
    endpoint : str
        The broker: ``tcp://host:port``, ``ipc:///path`` or ``inproc://name``.
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    linger : float
        Seconds :meth:`close` waits for an unsent request; default 0.
    curve : ringbus.transport.CurveClient, optional
        This client's keys and the broker's public key, for a broker started with CURVE.

    Notes
    -----
    One request at a time. After a timeout (or a malformed reply) the socket
    is replaced, so a late reply can never be taken for the next request's.
    A failed handler on a ringbus worker comes back as a reply whose first
    body frame is :data:`~ringbus.broker.majordomo.ERROR_FRAME`; it is raised
    as :class:`ServiceError`. The client belongs to the thread that created it
    (ZeroMQ sockets are not thread-safe): other threads get ``RuntimeError``.
    """

    def __init__(self, endpoint: str, *, context: zmq.Context[Any] | None = None, linger: float = 0,
                 curve: CurveClient | None = None) -> None:
        self._endpoint = _check_endpoint(endpoint)
        self._linger = _check_linger(linger)
        self._context = _check_context(context)
        self._curve = curve  # a CURVE broker's client keys (ringbus.transport.CurveClient)
        self._owner = threading.get_ident()
        self._socket: zmq.Socket[bytes] | None = None
        self._socket = _dealer(self._context, self._endpoint, self._linger, curve)

    def _reconnect(self) -> None:
        old, self._socket = self._socket, None
        if old is not None:
            old.close(0)  # whatever is still queued belongs to the request given up on
        self._socket = _dealer(self._context, self._endpoint, self._linger, self._curve)

    def _check_owner(self) -> zmq.Socket[bytes]:
        if self._socket is None:
            raise Closed("MajordomoClient is closed")
        if threading.get_ident() != self._owner:
            raise RuntimeError("MajordomoClient belongs to the thread that created it; ZeroMQ sockets must not "
                               "be shared between threads - create one client per thread")
        return self._socket

    def request(self, service: bytes | str, *body: bytes, timeout: float | None = 2.5) -> list[bytes]:
        """Send a request to a service and return the reply's body frames.

        Parameters
        ----------
        service : bytes or str
            The service name (UTF-8 if str).
        *body : bytes
            The request's body frames (none is allowed).
        timeout : float or None
            Seconds to wait for the reply; None waits as long as it takes.

        Returns
        -------
        list of bytes
            The reply's body frames.

        Raises
        ------
        ringbus.Empty
            If no reply came within ``timeout`` (the request may still be served).
        ServiceError
            If the worker's handler failed (a ``ringbus.RingbusError``).
        ringbus.ProtocolError
            If the broker's reply was malformed or for another service.
        ringbus.Full
            If the request could not even be queued for sending.
        ringbus.Closed
            If the client is closed.
        """
        sock = self._check_owner()
        name = _service_bytes(service)
        frames = [b"", C_CLIENT, name, *_body_frames(list(body), "body")]
        deadline = check_timeout(timeout)
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self._reconnect()
            raise Full(f"MajordomoClient: no room to send to {self._endpoint}") from None
        ms = -1 if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
        if not sock.poll(ms, zmq.POLLIN):
            self._reconnect()
            raise Empty(f"no reply from service {name!r} within timeout={timeout} s")
        reply = sock.recv_multipart()
        if len(reply) < 3 or reply[0] != b"" or reply[1] != C_CLIENT or reply[2] != name:
            self._reconnect()
            raise ProtocolError(f"malformed Majordomo reply to a request for {name!r}: {reply[:3]!r}")
        body_out = reply[3:]
        if body_out and body_out[0] == ERROR_FRAME:
            reason = body_out[1].decode("utf-8", "replace") if len(body_out) > 1 else "no reason given"
            raise ServiceError(name.decode("utf-8", "replace"), reason)
        return body_out

    def available(self, service: bytes | str, *, timeout: float | None = 2.5) -> bool:
        """Whether the broker has a worker for ``service`` (RFC 8 ``mmi.service``)."""
        return self.request(MMI_SERVICE, _service_bytes(service), timeout=timeout) == [MMI_FOUND]

    def close(self) -> None:
        """Close the socket (waiting at most ``linger``); idempotent."""
        if self._socket is not None:
            self._check_owner()
            sock, self._socket = self._socket, None
            sock.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._socket is None


class MajordomoWorker(_Peer):
    """Serve one Majordomo service (ZeroMQ DEALER speaking MDP/0.1 as a worker).

    Parameters
    ----------
    endpoint : str
        The broker: ``tcp://host:port``, ``ipc:///path`` or ``inproc://name``.
    service : bytes or str
        The service to offer; not empty, UTF-8, not ``mmi.*``.
    heartbeat_interval : float
        Seconds between heartbeats; the broker must use the same.
    liveness : int
        The broker counts as gone after ``liveness * heartbeat_interval`` seconds
        of silence; the worker then reconnects (a new socket, READY again).
    context : zmq.Context, optional
        Default ``zmq.Context.instance()``.
    linger : float
        Seconds the socket may take at the end of :meth:`serve` to deliver the
        last reply and DISCONNECT; default 1.0.
    curve : ringbus.transport.CurveClient, optional
        This worker's keys and the broker's public key, for a broker started with CURVE.

    Notes
    -----
    The socket lives inside :meth:`serve`, in the thread that calls it. The
    handler runs in a helper thread of the worker's own while the serve loop
    keeps heartbeating, so a request may take longer than the broker's
    liveness period without the worker being taken for dead. Requests are
    still handled one at a time, in order. A handler that raises is logged
    (``ringbus.broker.majordomo``) and its client gets an error reply:
    ``[ERROR_FRAME, b"<ExceptionType>: <message>"]``, which
    :class:`MajordomoClient` raises as :class:`ServiceError`. The reply to a
    request taken before a reconnect is not sent: the broker has forgotten it
    (and given the request to another worker, once).
    """

    def __init__(
        self,
        endpoint: str,
        service: bytes | str,
        *,
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        context: zmq.Context[Any] | None = None,
        linger: float = 1.0,
        curve: CurveClient | None = None,
    ) -> None:
        self._endpoint = _check_endpoint(endpoint)
        self._service = _service_bytes(service)
        try:
            self._label = self._service.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"service must be UTF-8, not {self._service!r}") from None
        if self._service.startswith(MMI_PREFIX):
            raise ValueError(f"service {self._label!r} is reserved: mmi.* services belong to the broker")
        self._interval = check_seconds(heartbeat_interval, "heartbeat_interval")
        self._lifetime = self._interval * check_count(liveness, "liveness")
        self._context = _check_context(context)
        self._linger = _check_linger(linger)
        self._curve = curve  # a CURVE broker's client keys (ringbus.transport.CurveClient)
        self._lock = threading.Lock()
        self._serving = False
        self._closed = threading.Event()
        self._counts = dict.fromkeys(("requests", "replies", "errors", "malformed", "reconnects", "unsent"), 0)

    def serve(self, handler: Handler, *, stop: threading.Event | None = None, poll_interval: float = 0.1) -> None:
        """Register with the broker and answer requests with ``handler`` until ``stop`` is set.

        Parameters
        ----------
        handler : callable
            ``handler(body_frames) -> bytes | list[bytes]``: the reply's body.
        stop : threading.Event, optional
            Anything with ``is_set()``. Once set, the request in hand is finished
            and answered, DISCONNECT is sent and serve returns. :meth:`close`
            from another thread stops it too.
        poll_interval : float
            Seconds between checks of ``stop`` while idle.

        Raises
        ------
        ringbus.Closed
            If the worker is closed.
        RuntimeError
            If it is already serving (in another thread).
        """
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if stop is not None and not callable(getattr(stop, "is_set", None)):
            raise TypeError(f"stop must have an is_set() method (a threading.Event), not {type(stop).__name__}")
        poll_interval = check_seconds(poll_interval, "poll_interval")
        with self._lock:
            if self._closed.is_set():
                raise Closed("MajordomoWorker is closed")
            if self._serving:
                raise RuntimeError("MajordomoWorker is already serving; make one worker per thread")
            self._serving = True
        try:
            _Session(self, handler, poll_interval).run(stop)
        finally:
            with self._lock:
                self._serving = False

    def stats(self) -> dict[str, int]:
        """Counters: requests taken, replies sent, handler errors, malformed commands, reconnects, unsent messages."""
        return dict(self._counts)

    def close(self) -> None:
        """Stop :meth:`serve` (from any thread) and refuse further calls; idempotent."""
        self._closed.set()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed.is_set()

    @property
    def service(self) -> str:
        """The service this worker offers."""
        return self._label


class _Session:
    """One run of :meth:`MajordomoWorker.serve`: the socket, the timers and the request in hand.

    The handler runs inline in the serve thread (no hand-off to another thread on the request path: it cost
    about 1.2x a raw REQ/REP round trip). While it runs, a pacemaker thread sends the heartbeats the serve
    loop cannot, so a long request does not get the worker taken for dead. The socket is used by one thread
    at a time: the serve thread holds ``_lock`` except while its handler runs, and the pacemaker only sends
    under it (a mutex is the full memory barrier ZeroMQ asks for when a socket changes threads).
    """

    def __init__(self, worker: MajordomoWorker, handler: Handler, poll_interval: float) -> None:
        self._worker = worker
        self._handler = handler
        self._counts = worker._counts
        self._poll_interval = poll_interval
        self._poller = zmq.Poller()
        self._socket: zmq.Socket[bytes] | None = None
        self._broker_expires = 0.0
        self._heartbeat_at = 0.0
        self._lock = threading.Lock()
        self._busy = False
        self._quit = threading.Event()

    def run(self, stop: Any) -> None:
        worker = self._worker
        self._lock.acquire()
        pacemaker = threading.Thread(target=self._pace, name=f"ringbus-mdp-{worker._label}", daemon=True)
        pacemaker.start()
        try:
            self._connect()
            while not (worker._closed.is_set() or (stop is not None and stop.is_set())):
                now = time.monotonic()
                if now >= self._broker_expires:
                    log.warning("MajordomoWorker %r: the broker at %s was silent for %g s; reconnecting",
                                worker._label, worker._endpoint, worker._lifetime)
                    self._reconnect()
                    continue
                if now >= self._heartbeat_at:
                    self._send([b"", W_WORKER, W_HEARTBEAT])
                wait = min(self._poll_interval, self._heartbeat_at - now, self._broker_expires - now)
                if self._poller.poll(max(0, math.ceil(wait * 1000))):
                    self._read_broker()
        finally:
            if self._socket is not None:
                self._send([b"", W_WORKER, W_DISCONNECT])
                self._socket.close()  # waits up to linger for the last reply and DISCONNECT
                self._socket = None
            self._quit.set()
            self._lock.release()
            pacemaker.join()

    def _pace(self) -> None:
        interval = self._worker._interval
        while not self._quit.wait(interval / 2):
            if self._busy:
                with self._lock:
                    if self._busy and time.monotonic() >= self._heartbeat_at:
                        self._send([b"", W_WORKER, W_HEARTBEAT])

    def _connect(self) -> None:
        worker = self._worker
        sock = self._socket = _dealer(worker._context, worker._endpoint, worker._linger, worker._curve)
        self._poller.register(sock, zmq.POLLIN)
        self._broker_expires = time.monotonic() + worker._lifetime
        self._send([b"", W_WORKER, W_READY, worker._service])

    def _reconnect(self) -> None:
        if self._socket is not None:
            self._poller.unregister(self._socket)
            self._socket.close(0)
            self._socket = None
        self._counts["reconnects"] += 1
        self._connect()

    def _send(self, frames: list[bytes]) -> None:
        sock = self._socket
        if sock is None:
            return
        self._heartbeat_at = time.monotonic() + self._worker._interval  # any command is a heartbeat
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # the broker is not taking messages: the next ones may go through
            self._counts["unsent"] += 1
            if log_sparsely(self._counts["unsent"]):
                log.warning("MajordomoWorker %r: the broker's queue is full; a %r command was not sent (%d so far)",
                            self._worker._label, frames[2], self._counts["unsent"])

    def _read_broker(self) -> None:
        while self._socket is not None:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._broker_expires = time.monotonic() + self._worker._lifetime  # anything from it shows it lives
            if not self._on_command(frames):
                return  # reconnected: the old socket is gone

    def _on_command(self, frames: list[bytes]) -> bool:
        """Act on one message from the broker; False if it made the worker reconnect."""
        if len(frames) >= 3 and frames[0] == b"" and frames[1] == W_WORKER:
            command = frames[2]
            if command == W_REQUEST and len(frames) >= 5 and frames[4] == b"":
                self._serve(frames[3], frames[5:])
                return True
            if command == W_HEARTBEAT:
                return True
            if command == W_DISCONNECT:
                log.info("MajordomoWorker %r: the broker sent DISCONNECT; reconnecting", self._worker._label)
                self._reconnect()
                return False
        self._counts["malformed"] += 1
        if log_sparsely(self._counts["malformed"]):
            log.warning("MajordomoWorker %r: ignored a malformed command from the broker: %r (%d so far)",
                        self._worker._label, frames[:3], self._counts["malformed"])
        return True

    def _serve(self, client: bytes, body: list[bytes]) -> None:
        self._counts["requests"] += 1
        self._busy = True
        self._lock.release()  # the pacemaker may beat while the handler runs
        try:
            reply, ok = _body_frames(self._handler(body), "the handler's reply"), True
        except BaseException as exc:  # noqa: BLE001 - the client must hear of it, and the loop must go on
            log.exception("MajordomoWorker: the handler of %r failed; the client gets an error reply",
                          self._worker._label)
            reason = f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace")
            reply, ok = [ERROR_FRAME, reason], False
        finally:
            self._lock.acquire()
            self._busy = False
        if not ok:
            self._counts["errors"] += 1
        self._send([b"", W_WORKER, W_REPLY, client, b"", *reply])
        self._counts["replies"] += 1
