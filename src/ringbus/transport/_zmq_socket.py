"""The plumbing every ringbus ZeroMQ helper shares: options, bind/connect, bounded waits, ownership, close."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import zmq

from ringbus.codec import INLINE_MAX, decode
from ringbus.errors import Closed, Empty, Full, PeerGone, ProtocolError
from ringbus.message import Message

if TYPE_CHECKING:
    from typing_extensions import Self

    from ringbus.transport.curve import CurveClient, CurveServer, _Authenticator

__all__ = [
    "DEFAULT_HWM",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_COPY_THRESHOLD",
    "TransportStatistics",
]

log = logging.getLogger("ringbus.transport")

DEFAULT_HWM = 1000
"""Messages queued per peer and per direction (ZMQ_SNDHWM and ZMQ_RCVHWM): libzmq's own default."""

DEFAULT_LINGER = 1.0
"""Seconds ``close()`` waits for queued outgoing messages to reach connected peers."""

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Largest inbound frame in bytes (ZMQ_MAXMSGSIZE): libzmq drops a peer that sends a larger one."""

DEFAULT_COPY_THRESHOLD = 65536
"""Frames of at least this many bytes are sent and received zero-copy (pyzmq's own ``zmq.COPY_THRESHOLD``)."""

_SCHEMES = ("tcp://", "ipc://", "inproc://")
# Plain ints: pyzmq's flag enums cost about a microsecond per `|` on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_SNDMORE = int(zmq.SNDMORE)


def recv_nowait(sock: zmq.Socket[Any]) -> list[bytes] | None:
    """One whole multipart message as bytes frames, or None if none is waiting.

    pyzmq's recv_multipart builds enum flags on every call (measured: 7 enum
    constructions per message, a fifth of a broker's receive cost); plain ints do not.
    """
    try:
        frames = [sock.recv(_NOBLOCK)]
    except zmq.Again:
        return None
    get, recv = sock.get, sock.recv
    while get(_RCVMORE):
        frames.append(recv(_NOBLOCK))  # libzmq delivers a message whole: the rest is here
    return frames


def send_frames(sock: zmq.Socket[Any], frames: list[Any], *, block: bool = False) -> None:
    """Send a multipart message (without blocking unless asked: zmq.Again at the HWM); int flags, copying sends."""
    send = sock.send
    flags = 0 if block else _NOBLOCK
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, flags | _SNDMORE if i < last else flags)
# Only the ROUTER can report "writable" and still refuse a send (the one peer we
# address is full while others are not); these bound the sleep between retries.
_BACKOFF_FIRST = 0.001
_BACKOFF_MAX = 0.05


@dataclass(frozen=True)
class TransportStatistics:
    """Counters of one ringbus ZeroMQ helper; a snapshot, stale as soon as read.

    Attributes
    ----------
    sent : int
        Messages handed to libzmq (a PUB counts what it published, whether or not
        a subscriber was too slow to take it).
    received : int
        Well-formed messages returned to the caller (or given to a serve handler).
    malformed : int
        Inputs that failed to decode: raised as ``ProtocolError`` from ``recv`` or
        ``request``, or dropped by ``Replier.serve``.
    stale_replies : int
        ``Requester`` only: replies that answered no outstanding request (for
        example the late reply to a request that timed out); discarded.
    handler_errors : int
        ``Replier.serve`` only: requests whose handler raised; logged, not answered.
    unroutable : int
        ``Replier`` only: replies that could not be delivered because the
        requester was gone or kept its queue full past the timeout.
    auth_refused : int
        CURVE servers only: connections the authenticator refused because the
        client's public key is not authorised. (A client without CURVE fails the
        handshake before it reaches the authenticator and is not counted.)
    """

    sent: int = 0
    received: int = 0
    malformed: int = 0
    stale_replies: int = 0
    handler_errors: int = 0
    unroutable: int = 0
    auth_refused: int = 0


def check_timeout(timeout: float | None) -> float | None:
    """Validate a timeout in seconds and turn it into a ``time.monotonic()`` deadline (None: none)."""
    if timeout is None:
        return None
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}") from None
    if not seconds >= 0.0 or math.isinf(seconds):  # `not >=` also catches NaN
        raise ValueError(f"timeout must be a finite number of seconds >= 0 or None, not {timeout!r}")
    return time.monotonic() + seconds


def log_sparsely(count: int) -> bool:
    """True for counts 1, 2, 4, 8, ...: a flood of bad input logs O(log n) lines, not n."""
    return count & (count - 1) == 0


def _check_endpoint(endpoint: object) -> str:
    if not isinstance(endpoint, str):
        raise TypeError(f"endpoint must be a str such as 'tcp://127.0.0.1:5555', not {type(endpoint).__name__}")
    if not endpoint.startswith(_SCHEMES) or endpoint.endswith("://"):
        raise ValueError(
            f"endpoint {endpoint!r} is not a ZeroMQ endpoint ringbus supports: "
            "use tcp://host:port, ipc:///path or inproc://name"
        )
    return endpoint


def _check_int(value: object, name: str, minimum: int) -> int:
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return int(value)


class ZmqSocket:
    """Base of the ringbus ZeroMQ helpers: one libzmq socket, its options, its counters.

    Not public: see the subclasses in :mod:`ringbus.transport.zmq` for the
    parameters, which every helper shares.
    """

    _socket_type: ClassVar[int]
    # How many leading frames of a received message are always small (routing
    # ids, topic, delimiter, header): received with a copy, never zero-copy.
    _small_frames: ClassVar[int] = 1

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool,
        hwm: int = DEFAULT_HWM,
        linger: float = DEFAULT_LINGER,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        copy_threshold: int = DEFAULT_COPY_THRESHOLD,
        context: zmq.Context[Any] | None = None,
        curve: CurveServer | CurveClient | None = None,
    ) -> None:
        from ringbus.transport.curve import CurveClient, CurveServer

        endpoint = _check_endpoint(endpoint)
        # hwm=0 would mean "no limit" to libzmq: unbounded memory, which ringbus never allows.
        hwm = _check_int(hwm, "hwm", 1)
        copy_threshold = _check_int(copy_threshold, "copy_threshold", 0)
        if max_message_size is not None:
            max_message_size = _check_int(max_message_size, "max_message_size", 1)
        if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not 0 <= linger < math.inf:
            raise ValueError(f"linger must be a finite number of seconds >= 0, not {linger!r}")
        if curve is not None and not isinstance(curve, (CurveServer, CurveClient)):
            raise TypeError(f"curve must be a CurveServer, a CurveClient or None, not {type(curve).__name__}")
        if context is not None and not isinstance(context, zmq.Context):
            raise TypeError(f"context must be a zmq.Context or None, not {type(context).__name__}")

        self._owner = threading.get_ident()
        self._copy_threshold = copy_threshold
        # Bodies below the copy threshold are copied by pyzmq anyway: send them
        # inside the header frame (one frame, not two). Larger ones get their
        # own frame and travel without a copy.
        self._inline_max = min(INLINE_MAX, copy_threshold - 1)
        # Whether the next body frame is received zero-copy: guessed from the
        # previous body on this socket, since libzmq gives no size before recv.
        self._zero_copy = copy_threshold == 0
        self._endpoints: list[str] = []
        self._sent = 0
        self._received = 0
        self._malformed = 0
        self._auth: _Authenticator | None = None
        self._own_context: zmq.Context[Any] | None = None

        if context is None and isinstance(curve, CurveServer):
            # The ZAP handler of a context is one inproc endpoint, so each CURVE
            # server gets a context of its own and its own authorised-key list.
            context = self._own_context = zmq.Context()
        elif context is None:
            context = zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        try:
            sock: zmq.Socket[bytes] = context.socket(self._socket_type)
            self._socket = sock
            sock.linger = int(round(linger * 1000))
            sock.sndhwm = hwm
            sock.rcvhwm = hwm
            sock.set(zmq.MAXMSGSIZE, -1 if max_message_size is None else max_message_size)
            sock.copy_threshold = copy_threshold
            self._configure(sock)
            if isinstance(curve, CurveServer):
                self._auth = curve.start_authenticator(context)
            if curve is not None:
                curve.apply(sock)
            if bind:
                self.bind(endpoint)
            else:
                self.connect(endpoint)
        except BaseException:
            self.close()
            raise

    def _configure(self, sock: zmq.Socket[bytes]) -> None:
        """Set the options particular to one socket type (subclasses)."""

    # --- endpoints -----------------------------------------------------------------------

    def bind(self, endpoint: str) -> str:
        """Bind to one more endpoint.

        Parameters
        ----------
        endpoint : str
            ``tcp://host:port`` (port ``*`` picks a free one), ``ipc:///path`` or ``inproc://name``.

        Returns
        -------
        str
            The endpoint as bound, with a wildcard port resolved (ZMQ_LAST_ENDPOINT).
        """
        sock = self._check_owner()
        sock.bind(_check_endpoint(endpoint))
        last = sock.get(zmq.LAST_ENDPOINT)
        bound = last.decode() if isinstance(last, bytes) else str(last)
        self._endpoints.append(bound)
        return bound

    def connect(self, endpoint: str) -> str:
        """Connect to one more endpoint (libzmq reconnects by itself if the peer goes away).

        Parameters
        ----------
        endpoint : str
            ``tcp://host:port``, ``ipc:///path`` or ``inproc://name``.

        Returns
        -------
        str
            The endpoint.
        """
        sock = self._check_owner()
        sock.connect(_check_endpoint(endpoint))
        self._endpoints.append(endpoint)
        return endpoint

    @property
    def endpoint(self) -> str:
        """The first endpoint bound or connected (a bound wildcard port resolved)."""
        return self._endpoints[0]

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint bound or connected, in order."""
        return list(self._endpoints)

    # --- life cycle ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._socket is None

    def close(self) -> None:
        """Close the socket (waiting at most ``linger`` for queued sends) and the authenticator; idempotent.

        Raises
        ------
        RuntimeError
            If called from a thread other than the one that created the helper.
        """
        if self._socket is not None:
            self._check_owner()
            sock, self._socket = self._socket, None
            sock.close()
        if self._auth is not None:
            # Kept after stopping (stop is idempotent): statistics() still reads its count.
            self._auth.stop()
        if self._own_context is not None:
            ctx, self._own_context = self._own_context, None
            ctx.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def statistics(self) -> TransportStatistics:
        """Return a snapshot of this helper's counters (safe to call from any thread).

        Returns
        -------
        TransportStatistics
        """
        return TransportStatistics(
            sent=self._sent,
            received=self._received,
            malformed=self._malformed,
            auth_refused=self._auth.refused if self._auth is not None else 0,
            **self._more_statistics(),
        )

    def _more_statistics(self) -> dict[str, int]:
        return {}

    def __repr__(self) -> str:
        state = "closed" if self._socket is None else ", ".join(self._endpoints)
        return f"<{type(self).__name__} {state}>"

    # --- checks --------------------------------------------------------------------------

    def _check_owner(self) -> zmq.Socket[bytes]:
        sock = self._socket
        if sock is None:
            raise Closed(f"{type(self).__name__} is closed")
        if threading.get_ident() != self._owner:
            # libzmq sockets are not thread-safe: sharing one corrupts its state
            # or aborts the process, so refuse loudly instead.
            raise RuntimeError(
                f"{type(self).__name__} belongs to the thread that created it; ZeroMQ sockets "
                "must not be shared between threads - create one helper per thread"
            )
        return sock

    # --- sending and receiving frames --------------------------------------------------

    def _send_frames(self, frames: list[Any], deadline: float | None, timeout: float | None) -> None:
        sock = self._check_owner()
        backoff = _BACKOFF_FIRST
        while True:
            try:
                # copy=False: pyzmq still copies frames below copy_threshold,
                # and lends larger ones (the body) to libzmq without a copy.
                # Only the first frame can raise Again: libzmq counts the HWM
                # in whole messages, so the rest of a started message always fits.
                if len(frames) == 1:  # an inline body: small, so a copying send is cheapest
                    sock.send(frames[0], _NOBLOCK)
                else:
                    sock.send_multipart(frames, _NOBLOCK, copy=False)
                self._sent += 1
                return
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                self._raise_mapped(exc)
            if not self._wait(sock, zmq.POLLOUT, deadline):
                raise Full(f"{type(self).__name__}: no room to send within timeout={timeout} s "
                           "(the peers' queues are at their high-water mark, or no peer is connected)")
            if self._socket_type == zmq.ROUTER:
                time.sleep(backoff if deadline is None else max(0.0, min(backoff, deadline - time.monotonic())))
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _recv_frames(self, deadline: float | None, timeout: float | None) -> list[Any]:
        """Receive one whole multipart message: frames are bytes, large body frames read-only memoryviews."""
        sock = self._check_owner()
        while True:
            try:
                first = sock.recv(_NOBLOCK)
                break
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                self._raise_mapped(exc)
            if not self._wait(sock, zmq.POLLIN, deadline):
                raise Empty(f"{type(self).__name__}: no message within timeout={timeout} s")
        frames: list[Any] = [first]
        # libzmq delivers multipart messages whole: once the first frame is
        # here the rest are too, so NOBLOCK cannot fail below.
        zero_copy = self._zero_copy
        small = self._small_frames
        while sock.get(_RCVMORE):
            if len(frames) < small or not zero_copy:
                frames.append(sock.recv(_NOBLOCK))
            else:
                frames.append(sock.recv(_NOBLOCK, copy=False))
        threshold = self._copy_threshold
        if zero_copy:
            for i in range(small, len(frames)):
                frame = frames[i]
                # A small frame is cheaper to use as bytes than as a zmq.Frame. A
                # large one is lent read-only: over inproc it can be the
                # sender's own buffer, which a write would change under it.
                frames[i] = frame.bytes if len(frame) < threshold else frame.buffer.toreadonly()
        self._zero_copy = len(frames[-1]) >= threshold
        return frames

    def _wait(self, sock: zmq.Socket[bytes], event: int, deadline: float | None) -> bool:
        """Poll until ``event`` or the deadline; False if the deadline passed first."""
        while True:
            if deadline is None:
                ms = -1
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                ms = math.ceil(remaining * 1000)
            try:
                if sock.poll(ms, event):
                    return True
            except zmq.ZMQError as exc:
                self._raise_mapped(exc)

    def _raise_mapped(self, exc: zmq.ZMQError) -> None:
        if exc.errno == zmq.ETERM:
            raise Closed(f"{type(self).__name__}: its zmq.Context was terminated") from exc
        if exc.errno == zmq.EHOSTUNREACH:
            raise PeerGone(f"{type(self).__name__}: the peer to reply to is no longer connected") from exc
        raise exc


# --- shared by the helper modules ------------------------------------------------------

# A deadline that has always passed: take what is ready, never wait.
NO_WAIT = -math.inf

COMMON_PARAMETERS = """\
    hwm : int
        High-water mark in messages, per peer and per direction (ZMQ_SNDHWM and
        ZMQ_RCVHWM); default 1000, libzmq's own. Bounds memory to about
        ``2 * hwm`` messages per connection, plus the kernel's socket buffers.
    linger : float
        Seconds :meth:`close` waits for queued outgoing messages to reach
        connected peers; default 1.0. 0 discards them at once.
    max_message_size : int or None
        Largest inbound frame in bytes (ZMQ_MAXMSGSIZE, checked per frame on
        tcp and ipc): libzmq drops the connection of a peer that sends a larger
        one, and the socket keeps working with its other peers. Default 64 MiB;
        None for no limit (trusted peers only).
    copy_threshold : int
        Frames of at least this many bytes are sent and received without a copy;
        smaller ones are copied, which pyzmq measures as faster for them.
        Default 65536, pyzmq's own ``zmq.COPY_THRESHOLD``; 0 makes every body
        zero-copy. A zero-copy body arrives as a read-only ``memoryview`` over
        the ZeroMQ frame (it keeps the frame alive), a copied one as ``bytes``.
        libzmq tells no frame size before the receive, so a body is received
        zero-copy when the previous body on this socket was large too: the
        first large body after small ones is copied.
    context : zmq.Context, optional
        The context to make the socket in. Default ``zmq.Context.instance()``,
        pyzmq's process-wide context (it is re-created in a forked child and
        never terminated by ringbus); a :class:`CurveServer` without a context
        gets a private one, terminated by :meth:`close`.
    curve : CurveServer or CurveClient, optional
        Encrypt the connection and authenticate clients (meant for ``tcp://``);
        see :mod:`ringbus.transport.curve`. Default: plain, unauthenticated.

    Raises
    ------
    TypeError, ValueError
        If a parameter has the wrong type or value (the message names it).
    zmq.ZMQError
        If libzmq cannot bind or connect (e.g. the address is in use).

    Notes
    -----
    A helper belongs to the thread that created it: ZeroMQ sockets are not
    thread-safe, so every method except :meth:`statistics` raises
    ``RuntimeError`` in another thread. Make one helper per thread.
    Use it as a context manager, or call :meth:`close`.

"""


_T = TypeVar("_T")


def common_doc(cls: type[_T]) -> type[_T]:
    # The parameters every helper shares, written once.
    cls.__doc__ = (cls.__doc__ or "").replace("    {common}\n", COMMON_PARAMETERS)
    return cls


def check_message(message: object) -> Message:
    """Return ``message`` if it is a Message, else raise a TypeError that says how to make one."""
    if not isinstance(message, Message):
        raise TypeError(
            f"expected a ringbus Message, not {type(message).__name__}: wrap a body as Message(body) "
            "or serialize a value with Message.of(value)"
        )
    return message


class Receiver(ZmqSocket):
    """A helper that decodes what it receives and counts it (well-formed or malformed)."""

    # A ProtocolError met by recv_many after it already holds good messages:
    # it returns those and raises this on the next call, so nothing is lost.
    _pending: ProtocolError | None = None

    def _take_pending(self) -> None:
        if self._pending is not None:
            exc, self._pending = self._pending, None
            raise exc

    def _decode(self, frames: list[Any]) -> Message:
        try:
            message = decode(frames, copy=False)
        except ProtocolError:
            self._malformed += 1
            raise
        self._received += 1
        return message
