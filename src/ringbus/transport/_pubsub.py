"""Publish/subscribe over ZeroMQ: ringbus Messages under topics, matched by prefix."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import zmq

from ringbus.codec import encode
from ringbus.errors import ProtocolError
from ringbus.message import Message
from ringbus.transport._zmq_socket import (
    DEFAULT_COPY_THRESHOLD,
    DEFAULT_HWM,
    DEFAULT_LINGER,
    DEFAULT_MAX_MESSAGE_SIZE,
    NO_WAIT,
    Receiver,
    ZmqSocket,
    check_message,
    check_timeout,
    common_doc,
)

if TYPE_CHECKING:
    from ringbus.transport.curve import CurveClient, CurveServer

__all__ = ["Publisher", "Subscriber"]


@common_doc
class Publisher(ZmqSocket):
    """Publish messages under topics (ZeroMQ PUB); every matching subscriber gets a copy.

    Each message goes out as ``[topic, header, body]``: the UTF-8 topic is a
    frame of its own, so subscribers match topic prefixes as ZeroMQ does
    (a subscription to ``"order."`` takes ``"order.placed"``, not ``"orders"``).

    Parameters
    ----------
    endpoint : str
        ``tcp://host:port`` or ``ipc:///path`` (``inproc://name`` within one
        context). Bind ``tcp://127.0.0.1:*`` for a free port and read :attr:`endpoint`.
    bind : bool
        Bind (default: subscribers come and go) or connect (to a subscriber
        that binds, e.g. one collector of several publishers).
    {common}
    What blocks and what drops: :meth:`publish` never blocks. A subscriber
    whose queue is at the high-water mark (``hwm`` here plus its own) misses
    messages until it catches up, without notice; a subscriber also misses
    what is published before its subscription reaches the publisher (the
    "slow joiner": a few milliseconds after it connects). Use a queue
    (push/pull or the broker) for messages that must not be lost.
    """

    _socket_type = zmq.PUB

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
        super().__init__(endpoint, bind=bind, hwm=hwm, linger=linger, max_message_size=max_message_size,
                         copy_threshold=copy_threshold, context=context, curve=curve)

    def publish(self, topic: str, message: Message) -> None:
        """Publish one message under ``topic``; never blocks (see the class notes for what drops).

        Parameters
        ----------
        topic : str
            The topic; subscribers match it by prefix.
        message : Message
            The message. A large body is lent to libzmq without a copy: do not
            change it until it is sent.

        Raises
        ------
        ringbus.Closed
            If the Publisher is closed.
        TypeError, ValueError
            If ``topic`` is not a str, or ``message`` is not a Message or cannot be encoded.
        """
        if not isinstance(topic, str):
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        frames = [topic.encode("utf-8"), *encode(check_message(message), inline_max=self._inline_max)]
        self._send_frames(frames, NO_WAIT, 0)


@common_doc
class Subscriber(Receiver):
    """Receive published messages whose topic starts with one of the subscribed prefixes (ZeroMQ SUB).

    Parameters
    ----------
    endpoint : str
        ``tcp://host:port`` or ``ipc:///path`` (``inproc://name`` within one
        context); more with :meth:`connect`.
    topics : iterable of str
        Topic prefixes to subscribe to; ``""`` takes every topic. With none the
        Subscriber receives nothing until :meth:`subscribe` is called.
    bind : bool
        Connect (default) or bind.
    {common}
    What blocks and what drops: :meth:`recv` waits for a matching message.
    The publisher filters (on tcp and ipc) and drops messages for this
    subscriber while its queue is full. Malformed input raises
    ``ringbus.ProtocolError`` from :meth:`recv` (consumed and counted).
    """

    _socket_type = zmq.SUB
    _small_frames = 2

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = (),
        *,
        bind: bool = False,
        hwm: int = DEFAULT_HWM,
        linger: float = DEFAULT_LINGER,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        copy_threshold: int = DEFAULT_COPY_THRESHOLD,
        context: zmq.Context[Any] | None = None,
        curve: CurveServer | CurveClient | None = None,
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be an iterable of str, not a single str (write topics=[topic])")
        wanted = list(topics)
        for topic in wanted:
            _check_topic(topic)
        self._topics: list[str] = []
        super().__init__(endpoint, bind=bind, hwm=hwm, linger=linger, max_message_size=max_message_size,
                         copy_threshold=copy_threshold, context=context, curve=curve)
        for topic in wanted:
            self.subscribe(topic)

    @property
    def topics(self) -> list[str]:
        """The subscribed topic prefixes, in the order subscribed."""
        return list(self._topics)

    def subscribe(self, topic: str) -> None:
        """Also receive messages whose topic starts with ``topic`` (``""``: every topic).

        Parameters
        ----------
        topic : str
            The topic prefix.
        """
        self._check_owner().subscribe(_check_topic(topic).encode("utf-8"))
        self._topics.append(topic)

    def unsubscribe(self, topic: str) -> None:
        """Undo one earlier :meth:`subscribe` of exactly ``topic``.

        Parameters
        ----------
        topic : str
            A topic prefix subscribed before.

        Raises
        ------
        ValueError
            If ``topic`` is not subscribed.
        """
        if topic not in self._topics:
            raise ValueError(f"topic {topic!r} is not subscribed (subscribed: {self._topics!r})")
        self._check_owner().unsubscribe(topic.encode("utf-8"))
        self._topics.remove(topic)

    def recv(self, timeout: float | None = None) -> tuple[str, Message]:
        """Receive one published message.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait; None waits as long as it takes, 0 not at all.

        Returns
        -------
        topic : str
            The full topic it was published under.
        message : Message

        Raises
        ------
        ringbus.Empty
            If no message arrived within ``timeout``.
        ringbus.ProtocolError
            If the next message is malformed (consumed and counted).
        ringbus.Closed
            If the Subscriber is closed.
        """
        self._take_pending()
        frames = self._recv_frames(check_timeout(timeout), timeout)
        try:
            topic = frames[0].decode("utf-8")
        except UnicodeDecodeError:
            self._malformed += 1
            raise ProtocolError(f"topic frame {bytes(frames[0][:64])!r} is not UTF-8 text") from None
        return topic, self._decode(frames[1:])

    def recv_nowait(self) -> tuple[str, Message]:
        """Receive a message that is already here, else raise ringbus.Empty; as ``recv(timeout=0)``."""
        return self.recv(0)


def _check_topic(topic: object) -> str:
    if not isinstance(topic, str):
        raise TypeError(f"a topic must be a str, not {type(topic).__name__}")
    return topic
