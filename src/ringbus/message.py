"""The Message envelope that every ringbus backend, pattern and wire frame carries."""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import msgspec

from ringbus.errors import RingbusError

if TYPE_CHECKING:
    from ringbus.codec import Serializer

__all__ = ["Message", "SettleHandle", "HeaderValue", "new_id"]

HeaderValue: TypeAlias = str | int | float | bool | None
"""The types a header value may have: they cross every backend and the wire unchanged."""

_BYTES_LIKE = (bytes, bytearray, memoryview)

# Ids come from a pool refilled with one os.urandom call per _POOL_SIZE ids:
# uuid.uuid4().hex costs ~1-3 us (a syscall plus the UUID object), the pool ~0.2 us.
# list.pop() and list.extend() are single atomic operations, so threads never
# receive the same id; the pool is emptied in a forked child so that parent and
# child never hand out the same ids.
_POOL_SIZE = 512
_POOL: list[str] = []
# RFC 9562 version 4 layout: the high nibble of byte 6 is the version (4) and the
# two high bits of byte 8 are the variant (0b10); the other 122 bits stay random.
_VERSION_4 = bytes((c & 0x0F) | 0x40 for c in range(256))
_VARIANT_RFC = bytes((c & 0x3F) | 0x80 for c in range(256))


def _refill() -> None:
    raw = bytearray(os.urandom(16 * _POOL_SIZE))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_RFC)
    _POOL.extend(raw.hex(" ", 16).split())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.clear)


def new_id() -> str:
    """Return a new random message id.

    Returns
    -------
    str
        A version 4 UUID (RFC 9562) as 32 lowercase hex digits without dashes:
        122 random bits from ``os.urandom``, so ``uuid.UUID(new_id())`` parses it.
    """
    try:
        return _POOL.pop()
    except IndexError:
        _refill()
        return _POOL.pop()


class SettleHandle(Protocol):
    """What a Bus attaches to a message it delivers, so that the message can settle itself."""

    def ack(self, message: Message, /) -> None:
        """Settle ``message`` as processed."""

    def nack(self, message: Message, requeue: bool, delay: float | None, /) -> None:
        """Settle ``message`` as failed: requeue it (after ``delay`` seconds) or drop it."""

    def reject(self, message: Message, /) -> None:
        """Settle ``message`` as unprocessable: send it to the dead-letter queue."""


class _Body(msgspec.Struct):
    # A base class of its own so that body stays positional while every other
    # field of Message is keyword-only.
    body: bytes | bytearray | memoryview


class Message(_Body, kw_only=True):
    """One message: a bytes-like body and its envelope.

    A ``msgspec.Struct`` (slotted, created in C): measured 1.4-2x cheaper to
    create than ``dataclass(slots=True)``, and creation is on every hot path
    (figures in docs/protocol.md).

    Parameters
    ----------
    body : bytes, bytearray or memoryview
        The payload, kept as given (never copied). Use :meth:`Message.of` to
        serialize another value into a body.
    id : str, optional
        Unique id; by default a new random one from :func:`new_id` (uuid4 hex).
    key : str or None
        Partition / ordering key (e.g. ``"order-42"``).
    priority : int
        Higher is more urgent; default 0.
    headers : dict of str to str, int, float, bool or None
        Application metadata that travels with the message.
    timestamp : float, optional
        Unix time in seconds; by default the time of creation.
    attempts : int
        How many times the message was delivered before; 0 for a new message.
    reply_to : str or None
        Where a reply to this message should be sent (request-reply).
    correlation_id : str or None
        The id of the request this message answers (request-reply).
    content_type : str
        How the body is serialized; default ``"application/octet-stream"``.
    meta : dict
        Serializer parameters, e.g. ``{"dtype": "<f8", "shape": [2, 3]}`` for a
        numpy array.

    Notes
    -----
    Equality compares every public field (the body by content). The private
    ``_settle`` field holds the :class:`SettleHandle` a Bus attaches to a
    message it delivers; it is not part of equality, repr or the wire.
    """

    id: str = msgspec.field(default_factory=new_id)
    key: str | None = None
    priority: int = 0
    headers: dict[str, HeaderValue] = msgspec.field(default_factory=dict)
    timestamp: float = msgspec.field(default_factory=time.time)
    attempts: int = 0
    reply_to: str | None = None
    correlation_id: str | None = None
    content_type: str = "application/octet-stream"
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    # Set by a Bus on delivery: an object with ack/nack/reject(message, ...).
    _settle: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.body, _BYTES_LIKE):
            raise TypeError(
                f"Message body must be bytes, bytearray or memoryview, not {type(self.body).__name__}; "
                "use Message.of(value) to serialize other values"
            )

    @classmethod
    def of(cls, value: object, serializer: Serializer | None = None, **fields: Any) -> Message:
        """Serialize ``value`` into a new message.

        Parameters
        ----------
        value : object
            The value to send.
        serializer : {"bytes", "str", "json", "msgpack", "numpy", "pickle"}, optional
            How to serialize ``value``; by default chosen from its type (see
            :func:`ringbus.codec.dumps`). Pickle is used only when named.
        **fields
            Any other :class:`Message` field (``key``, ``priority``, ``headers``, ...).

        Returns
        -------
        Message
            A message whose ``body``, ``content_type`` and ``meta`` come from the serializer.

        Raises
        ------
        TypeError
            If ``value`` has no default serializer, or the serializer refuses it.
        """
        from ringbus.codec import dumps

        body, content_type, meta = dumps(value, serializer)
        return cls(body, content_type=content_type, meta=meta, **fields)

    def value(self, allow_pickle: bool = False) -> Any:
        """Deserialize the body according to ``content_type`` and ``meta``.

        Parameters
        ----------
        allow_pickle : bool
            Unpickle an ``application/python-pickle`` body. Off by default:
            unpickling runs code chosen by the sender; only opt in for trusted senders.

        Returns
        -------
        object
            The value; for raw bytes the body itself, for numpy an array over the body.

        Raises
        ------
        ringbus.ProtocolError
            If the body does not decode, the content type is unknown, or it is
            pickle and ``allow_pickle`` is false.
        """
        from ringbus.codec import loads

        return loads(self.body, self.content_type, self.meta, allow_pickle=allow_pickle)

    def ack(self) -> None:
        """Settle the message as processed; the broker forgets it.

        Raises
        ------
        ringbus.RingbusError
            If the message was not received from a Bus.
        """
        self._handle("ack").ack(self)

    def nack(self, requeue: bool = True, delay: float | None = None) -> None:
        """Settle the message as failed.

        Parameters
        ----------
        requeue : bool
            Put the message back on its queue (its ``attempts`` grows); if false,
            drop it (or dead-letter it, as the queue is declared).
        delay : float or None
            Seconds to wait before the message is delivered again; None for at once.

        Raises
        ------
        ValueError
            If ``delay`` is negative or not finite.
        ringbus.RingbusError
            If the message was not received from a Bus.
        """
        if delay is not None:
            delay = float(delay)
            if not math.isfinite(delay) or delay < 0.0:
                raise ValueError(f"nack delay must be a finite number of seconds >= 0, not {delay!r}")
        self._handle("nack").nack(self, bool(requeue), delay)

    def reject(self) -> None:
        """Settle the message as unprocessable; it goes to the dead-letter queue.

        Raises
        ------
        ringbus.RingbusError
            If the message was not received from a Bus.
        """
        self._handle("reject").reject(self)

    def _handle(self, action: str) -> SettleHandle:
        handle: SettleHandle | None = self._settle
        if handle is None:
            raise RingbusError(
                f"cannot {action} message {self.id!r}: it was not received from a Bus "
                "(only messages delivered by receive, consume or subscribe can be settled)"
            )
        return handle

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (
            self.id == other.id
            and self.body == other.body
            and self.key == other.key
            and self.priority == other.priority
            and self.headers == other.headers
            and self.timestamp == other.timestamp
            and self.attempts == other.attempts
            and self.reply_to == other.reply_to
            and self.correlation_id == other.correlation_id
            and self.content_type == other.content_type
            and self.meta == other.meta
        )

    def __repr__(self) -> str:
        body = self.body
        # A body can be megabytes; show short ones, summarise the rest.
        if isinstance(body, bytes) and len(body) <= 32:
            shown = repr(body)
        else:
            shown = f"<{type(body).__name__} of {_nbytes(body)} bytes>"
        parts = [f"id={self.id!r}", f"body={shown}"]
        for name in ("key", "priority", "headers", "attempts", "reply_to", "correlation_id"):
            value = getattr(self, name)
            if value or (name == "priority" and value != 0):
                parts.append(f"{name}={value!r}")
        parts.append(f"content_type={self.content_type!r}")
        if self.meta:
            parts.append(f"meta={self.meta!r}")
        return f"Message({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (multiprocessing) carries the public fields only: the settle
        # handle belongs to this process's Bus, and a memoryview body cannot pickle.
        body = self.body if isinstance(self.body, bytes) else bytes(self.body)
        return (_restore, (body, self.id, self.key, self.priority, self.headers, self.timestamp,
                           self.attempts, self.reply_to, self.correlation_id, self.content_type, self.meta))


def _nbytes(body: bytes | bytearray | memoryview) -> int:
    return body.nbytes if isinstance(body, memoryview) else len(body)


def _restore(body: bytes, id: str, key: str | None, priority: int, headers: dict[str, HeaderValue],
             timestamp: float, attempts: int, reply_to: str | None, correlation_id: str | None,
             content_type: str, meta: dict[str, Any]) -> Message:
    return Message(body, id=id, key=key, priority=priority, headers=headers, timestamp=timestamp,
                   attempts=attempts, reply_to=reply_to, correlation_id=correlation_id,
                   content_type=content_type, meta=meta)
