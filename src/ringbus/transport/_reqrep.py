"""Request-reply over ZeroMQ: a DEALER Requester and a ROUTER Replier with its serve loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from ringbus.codec import decode, encode
from ringbus.errors import Empty, Full, PeerGone, ProtocolError
from ringbus.message import Message
from ringbus.transport._zmq_socket import (
    DEFAULT_COPY_THRESHOLD,
    DEFAULT_HWM,
    DEFAULT_LINGER,
    DEFAULT_MAX_MESSAGE_SIZE,
    Receiver,
    check_message,
    check_timeout,
    common_doc,
    log,
    log_sparsely,
)

if TYPE_CHECKING:
    from ringbus.transport.curve import CurveClient, CurveServer

__all__ = ["Requester", "Replier", "ReplyHandle"]


@common_doc
class Requester(Receiver):
    """Send requests and wait for their replies (ZeroMQ DEALER); pairs with :class:`Replier`.

    A request goes out as ``[b"", header, body]`` - the empty delimiter makes it
    speak to a ROUTER or REP server the way a REQ socket would. A reply matches
    the request whose ``id`` is its ``correlation_id``; any other reply (the
    late reply to a request that timed out) is discarded and counted in
    ``statistics().stale_replies``. Unlike REQ, a timed-out request does not
    wedge the socket: the next :meth:`request` just works.

    Parameters
    ----------
    endpoint : str
        ``tcp://host:port`` or ``ipc:///path`` of the server (``inproc://name``
        within one context); more with :meth:`connect` (requests are dealt
        round-robin to connected servers).
    bind : bool
        Connect (default) or bind.
    {common}
    What blocks and what drops: :meth:`request` waits for room to send (the
    server's queue full) and then for the reply, both within ``timeout``. A
    request made before the server is reachable waits in the queue and is
    delivered when it is (libzmq makes the queue at ``connect``).
    """

    _socket_type = zmq.DEALER
    _small_frames = 2

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        hwm: int = DEFAULT_HWM,
        linger: float = DEFAULT_LINGER,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        copy_threshold: int = DEFAULT_COPY_THRESHOLD,
        context: zmq.Context[Any] | None = None,
        curve: CurveServer | CurveClient | None = None,
    ) -> None:
        self._stale = 0
        super().__init__(endpoint, bind=bind, hwm=hwm, linger=linger, max_message_size=max_message_size,
                         copy_threshold=copy_threshold, context=context, curve=curve)

    def request(self, message: Message, timeout: float | None = None) -> Message:
        """Send a request and return its reply.

        Parameters
        ----------
        message : Message
            The request; its ``id`` is what the reply's ``correlation_id`` names.
        timeout : float or None
            Seconds for sending and for the reply together; None waits as long
            as it takes.

        Returns
        -------
        Message
            The reply, whose ``correlation_id`` equals ``message.id``.

        Raises
        ------
        ringbus.Empty
            If no reply arrived within ``timeout`` (a reply arriving later is
            discarded by a later call, and counted as stale).
        ringbus.Full
            If the request could not even be sent within ``timeout``.
        ringbus.ProtocolError
            If a malformed reply arrived (consumed and counted).
        ringbus.Closed
            If the Requester is closed.
        TypeError, ValueError
            If ``message`` is not a Message or cannot be encoded.
        """
        deadline = check_timeout(timeout)
        request_id = check_message(message).id
        self._send_frames([b"", *encode(message, inline_max=self._inline_max)], deadline, timeout)
        while True:
            try:
                frames = self._recv_frames(deadline, timeout)
            except Empty:
                raise Empty(f"no reply to request {request_id!r} within timeout={timeout} s") from None
            if not frames[0] == b"":
                self._malformed += 1
                raise ProtocolError(
                    f"reply does not start with the empty delimiter frame (got {bytes(frames[0][:64])!r}): "
                    "the server is not a ringbus Replier or a ROUTER/REP"
                )
            try:
                reply = decode(frames[1:], copy=False)
            except ProtocolError:
                self._malformed += 1
                raise
            if reply.correlation_id == request_id:
                self._received += 1
                return reply
            # A reply to an earlier request, which the caller gave up on.
            self._stale += 1
            log.debug("Requester: discarded a stale reply (correlation_id=%r) while waiting for %r",
                      reply.correlation_id, request_id)

    def _more_statistics(self) -> dict[str, int]:
        return {"stale_replies": self._stale}


@dataclass(frozen=True, slots=True)
class ReplyHandle:
    """Where a reply goes: the routing envelope of one request, as received by a :class:`Replier`.

    Attributes
    ----------
    envelope : tuple of bytes
        The routing frames up to and including the empty delimiter (one routing
        id per ROUTER the request passed through).
    request_id : str
        The request's ``id``; :meth:`Replier.reply` puts it in the reply's
        ``correlation_id`` unless that is already set.
    """

    envelope: tuple[bytes, ...]
    request_id: str

    @property
    def identity(self) -> bytes:
        """The routing id of the requester's connection (the first envelope frame)."""
        return self.envelope[0]


@common_doc
class Replier(Receiver):
    """Receive requests and send replies (ZeroMQ ROUTER); serves :class:`Requester`, DEALER and REQ clients.

    Parameters
    ----------
    endpoint : str
        ``tcp://host:port`` or ``ipc:///path`` (``inproc://name`` within one
        context). Bind ``tcp://127.0.0.1:*`` for a free port and read :attr:`endpoint`.
    bind : bool
        Bind (default) or connect.
    {common}
    What blocks and what drops: :meth:`recv` waits for a request. :meth:`reply`
    to a requester that has disconnected raises ``ringbus.PeerGone`` (the socket
    sets ZMQ_ROUTER_MANDATORY, where libzmq would otherwise drop the reply
    silently), and waits while that requester's queue is full. A malformed
    request raises ``ringbus.ProtocolError`` from :meth:`recv`; :meth:`serve`
    counts and drops it and goes on serving.
    """

    _socket_type = zmq.ROUTER
    _small_frames = 3

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        hwm: int = DEFAULT_HWM,
        linger: float = DEFAULT_LINGER,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        copy_threshold: int = DEFAULT_COPY_THRESHOLD,
        context: zmq.Context[Any] | None = None,
        curve: CurveServer | CurveClient | None = None,
    ) -> None:
        self._handler_errors = 0
        self._unroutable = 0
        super().__init__(endpoint, bind=bind, hwm=hwm, linger=linger, max_message_size=max_message_size,
                         copy_threshold=copy_threshold, context=context, curve=curve)

    def _configure(self, sock: zmq.Socket[bytes]) -> None:
        sock.router_mandatory = True

    def recv(self, timeout: float | None = None) -> tuple[ReplyHandle, Message]:
        """Receive one request.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait; None waits as long as it takes, 0 not at all.

        Returns
        -------
        handle : ReplyHandle
            Pass it to :meth:`reply`.
        request : Message

        Raises
        ------
        ringbus.Empty
            If no request arrived within ``timeout``.
        ringbus.ProtocolError
            If the next request is malformed (consumed and counted).
        ringbus.Closed
            If the Replier is closed.
        """
        frames = self._recv_frames(check_timeout(timeout), timeout)
        # frames[0] is the routing id libzmq added; the envelope ends at the
        # first empty frame (a header frame is never empty).
        for end in range(1, len(frames)):
            if len(frames[end]) == 0:
                break
        else:
            self._malformed += 1
            raise ProtocolError("request has no empty delimiter frame after its routing id")
        request = self._decode(frames[end + 1 :])
        return ReplyHandle(tuple(bytes(f) for f in frames[: end + 1]), request.id), request

    def recv_nowait(self) -> tuple[ReplyHandle, Message]:
        """Receive a request that is already here, else raise ringbus.Empty; as ``recv(timeout=0)``."""
        return self.recv(0)

    def reply(self, handle: ReplyHandle, message: Message, timeout: float | None = None) -> None:
        """Send the reply to one request.

        Parameters
        ----------
        handle : ReplyHandle
            From :meth:`recv`.
        message : Message
            The reply. If its ``correlation_id`` is None, a copy with
            ``correlation_id=handle.request_id`` is sent (``message`` is not changed).
        timeout : float or None
            Seconds to wait while the requester's queue is full; None waits as
            long as it takes.

        Raises
        ------
        ringbus.PeerGone
            If the requester is no longer connected (counted as unroutable).
        ringbus.Full
            If the requester's queue stayed full past ``timeout`` (counted as unroutable).
        ringbus.Closed
            If the Replier is closed.
        TypeError, ValueError
            If ``handle`` is not a ReplyHandle, or ``message`` is not a Message or cannot be encoded.
        """
        frames = self._reply_frames(handle, message)
        try:
            self._send_frames(frames, check_timeout(timeout), timeout)
        except (PeerGone, Full):
            self._unroutable += 1
            raise

    def _reply_frames(self, handle: ReplyHandle, message: Message) -> list[Any]:
        if not isinstance(handle, ReplyHandle):
            raise TypeError(f"handle must be the ReplyHandle from recv(), not {type(handle).__name__}")
        if check_message(message).correlation_id is None:
            message = msgspec.structs.replace(message, correlation_id=handle.request_id)
        return [*handle.envelope, *encode(message, inline_max=self._inline_max)]

    def serve(
        self,
        handler: Callable[[Message], Message | None],
        *,
        stop_event: Any = None,
        max_messages: int | None = None,
        poll_interval: float = 0.1,
        reply_timeout: float = 1.0,
    ) -> int:
        """Answer requests with ``handler`` until ``stop_event`` is set or ``max_messages`` were handled.

        Malformed requests are counted (``statistics().malformed``), logged
        sparsely and dropped; a handler that raises is logged with its
        traceback and counted (``handler_errors``), and its request gets no
        reply; a reply that cannot be delivered is counted (``unroutable``).
        None of these stop the loop.

        Parameters
        ----------
        handler : callable
            ``handler(request) -> Message | None``: the reply (its
            ``correlation_id`` is filled in if None), or None to send no reply.
        stop_event : threading.Event, optional
            Anything with ``is_set()``; checked at least every ``poll_interval``
            seconds. Set it from another thread to stop the loop.
        max_messages : int, optional
            Return after this many well-formed requests (malformed ones do not count).
        poll_interval : float
            Seconds between checks of ``stop_event`` while idle.
        reply_timeout : float
            Seconds to wait for room to send one reply before counting it unroutable.

        Returns
        -------
        int
            How many well-formed requests were handled.

        Raises
        ------
        ringbus.Closed
            If the Replier is closed.
        """
        if max_messages is not None:
            if isinstance(max_messages, bool) or not isinstance(max_messages, int):
                raise TypeError(f"max_messages must be an int or None, not {type(max_messages).__name__}")
            if max_messages < 0:
                raise ValueError(f"max_messages must be >= 0, not {max_messages}")
        # Both must be finite: serve must notice stop_event, and a stuck client
        # must not stall everyone else.
        for name, seconds in (("poll_interval", poll_interval), ("reply_timeout", reply_timeout)):
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
                raise ValueError(f"{name} must be a finite number of seconds > 0, not {seconds!r}")
        if stop_event is not None and not callable(getattr(stop_event, "is_set", None)):
            raise TypeError("stop_event must have an is_set() method (a threading.Event), "
                            f"not {type(stop_event).__name__}")
        handled = 0
        while max_messages is None or handled < max_messages:
            if stop_event is not None and stop_event.is_set():
                break
            try:
                handle, request = self.recv(poll_interval)
            except Empty:
                continue
            except ProtocolError as exc:
                if log_sparsely(self._malformed):
                    log.warning("Replier.serve: dropped a malformed request: %s (%d so far)", exc, self._malformed)
                continue
            handled += 1
            try:
                response = handler(request)
                frames = None if response is None else self._reply_frames(handle, response)
            except Exception:  # the handler is user code: any failure is logged, serving goes on
                self._handler_errors += 1
                log.exception("Replier.serve: the handler failed on request %r; it gets no reply", request.id)
                continue
            if frames is None:
                continue
            try:
                self._send_frames(frames, check_timeout(reply_timeout), reply_timeout)
            except (PeerGone, Full) as exc:
                self._unroutable += 1
                if log_sparsely(self._unroutable):
                    log.warning("Replier.serve: could not deliver the reply to request %r: %s (%d so far)",
                                request.id, exc, self._unroutable)
        return handled

    def _more_statistics(self) -> dict[str, int]:
        return {"handler_errors": self._handler_errors, "unroutable": self._unroutable}
