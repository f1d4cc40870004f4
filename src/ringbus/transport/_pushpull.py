"""Push/pull over ZeroMQ: a Pusher deals ringbus Messages to competing Pullers."""

from __future__ import annotations

from collections.abc import Iterable

import zmq

from ringbus.codec import encode
from ringbus.errors import Empty, Full, ProtocolError
from ringbus.message import Message
from ringbus.transport._zmq_socket import (
    NO_WAIT,
    Receiver,
    ZmqSocket,
    check_message,
    check_timeout,
    common_doc,
)

__all__ = ["Pusher", "Puller"]


@common_doc
class Pusher(ZmqSocket):
    """Send messages to competing pullers (ZeroMQ PUSH): each message goes to one puller.

    Messages are dealt round-robin to the connected pullers, skipping any whose
    queue is full.

    Parameters
    ----------
    endpoint : str
        ``tcp://host:port`` or ``ipc:///path`` (``inproc://name`` within one
        context). Bind ``tcp://127.0.0.1:*`` for a free port and read :attr:`endpoint`.
    bind : bool
        Bind (the stable end, which the others connect to) or connect. Required:
        a fan-out Pusher binds and its workers connect, a Pusher feeding one
        collector connects.
    {common}
    What blocks and what drops: :meth:`send` blocks while every connected
    puller's queue is at the high-water mark, and while no puller is connected
    to a bound Pusher. A connecting Pusher queues up to ``hwm`` messages for a
    puller it has not reached yet (libzmq makes the queue at ``connect``).
    Nothing is dropped while peers stay connected; messages queued for a puller
    that disconnects, or held by one that dies, are lost (at-most-once). So is
    the unread tail when a Pusher closes while its puller lags at the HWM:
    libzmq discards what is still in the socket buffer of a peer that has gone
    (measured: ~450 of 20,000 64-byte messages). Keep the Pusher open until the
    consumer confirms, or use the broker, which acknowledges.
    """

    _socket_type = zmq.PUSH

    def send(self, message: Message, timeout: float | None = None) -> None:
        """Send one message, waiting up to ``timeout`` seconds for room.

        Parameters
        ----------
        message : Message
            The message. A body of at least ``copy_threshold`` bytes is lent to
            libzmq without a copy: do not change it (e.g. the numpy array it
            views) until the peer has it.
        timeout : float or None
            Seconds to wait for room; None waits as long as it takes, 0 not at all.

        Raises
        ------
        ringbus.Full
            If no puller could take it within ``timeout`` (see the class notes).
        ringbus.Closed
            If the Pusher is closed.
        TypeError, ValueError
            If ``message`` is not a Message or its envelope cannot be encoded.
        """
        frames = encode(check_message(message), inline_max=self._inline_max)
        self._send_frames(frames, check_timeout(timeout), timeout)

    def send_nowait(self, message: Message) -> None:
        """Send one message if there is room now, else raise ringbus.Full; as ``send(message, timeout=0)``."""
        self.send(message, 0)

    def send_many(self, messages: Iterable[Message], timeout: float | None = None) -> int:
        """Send messages in order, all within one ``timeout``.

        Every message is encoded before the first is sent, so a bad one raises
        before anything leaves.

        Parameters
        ----------
        messages : iterable of Message
            The messages.
        timeout : float or None
            Seconds for the whole batch; None waits as long as it takes.

        Returns
        -------
        int
            How many were sent: all of them, or fewer only when ``timeout`` expired
            (the rest were not sent; send them again).

        Raises
        ------
        ringbus.Closed
            If the Pusher is closed.
        TypeError, ValueError
            If an item is not a Message or cannot be encoded.
        """
        deadline = check_timeout(timeout)
        inline_max = self._inline_max
        batch = [encode(check_message(m), inline_max=inline_max) for m in messages]
        for sent, frames in enumerate(batch):
            try:
                self._send_frames(frames, deadline, timeout)
            except Full:
                return sent
        return len(batch)


@common_doc
class Puller(Receiver):
    """Receive messages from pushers (ZeroMQ PULL), fair-queued across them.

    Parameters
    ----------
    endpoint : str
        ``tcp://host:port`` or ``ipc:///path`` (``inproc://name`` within one
        context). Bind ``tcp://127.0.0.1:*`` for a free port and read :attr:`endpoint`.
    bind : bool
        Bind (the stable end: a collector fed by many pushers) or connect (a
        worker of a fan-out Pusher). Required.
    {common}
    What blocks and what drops: :meth:`recv` waits for a message; a Puller never
    drops - when its queue is full the pushers block instead. Malformed input
    raises ``ringbus.ProtocolError`` from :meth:`recv` (the bad message is
    consumed and counted; the next call goes on with the next message).
    """

    _socket_type = zmq.PULL

    def recv(self, timeout: float | None = None) -> Message:
        """Receive one message.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait; None waits as long as it takes, 0 not at all.

        Returns
        -------
        Message
            The message; its body is ``bytes``, or a read-only ``memoryview``
            for a large body (see ``copy_threshold``).

        Raises
        ------
        ringbus.Empty
            If no message arrived within ``timeout``.
        ringbus.ProtocolError
            If the next message is malformed (it is consumed and counted).
        ringbus.Closed
            If the Puller is closed.
        """
        self._take_pending()
        return self._decode(self._recv_frames(check_timeout(timeout), timeout))

    def recv_nowait(self) -> Message:
        """Receive a message that is already here, else raise ringbus.Empty; as ``recv(timeout=0)``."""
        return self.recv(0)

    def recv_many(self, max_messages: int, timeout: float | None = None) -> list[Message]:
        """Wait up to ``timeout`` for one message, then take up to ``max_messages`` without waiting.

        Parameters
        ----------
        max_messages : int
            The most messages to return, >= 1.
        timeout : float or None
            Seconds to wait for the first message; None waits as long as it takes.

        Returns
        -------
        list of Message
            One to ``max_messages`` messages, in arrival order.

        Raises
        ------
        ringbus.Empty
            If no message arrived within ``timeout``.
        ringbus.ProtocolError
            If the first message is malformed. A malformed message after good
            ones ends the batch: the good ones are returned and the error is
            raised by the next ``recv`` or ``recv_many``.
        ValueError
            If ``max_messages`` < 1.
        """
        if isinstance(max_messages, bool) or not isinstance(max_messages, int):
            raise TypeError(f"max_messages must be an int, not {type(max_messages).__name__}")
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, not {max_messages}")
        out = [self.recv(timeout)]
        while len(out) < max_messages:
            try:
                frames = self._recv_frames(NO_WAIT, 0)
            except Empty:
                break
            try:
                out.append(self._decode(frames))
            except ProtocolError as exc:
                self._pending = exc
                break
        return out
