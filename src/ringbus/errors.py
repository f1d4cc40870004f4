"""The exceptions ringbus raises: one root, each also the builtin it resembles."""

from __future__ import annotations

import queue

__all__ = [
    "RingbusError",
    "Full",
    "Empty",
    "Closed",
    "PeerGone",
    "ProtocolError",
    "Unsupported",
    "NotFound",
]


class RingbusError(Exception):
    """Root of every exception ringbus raises on purpose."""


class Full(RingbusError, queue.Full):
    """A put could not proceed: the queue is at capacity (and the wait, if any, timed out)."""


class Empty(RingbusError, queue.Empty):
    """A get could not proceed: the queue is empty (and the wait, if any, timed out)."""


class Closed(RingbusError):
    """This side closed the queue or channel: puts are refused, gets drain and then raise."""


class PeerGone(RingbusError, ConnectionError):
    """The other side of a channel or connection went away without closing it."""


class ProtocolError(RingbusError, ValueError):
    """Bytes from the wire did not follow the ringbus protocol."""


class Unsupported(RingbusError, NotImplementedError):
    """The backend cannot give this feature; the message says which and why.

    ``feature`` names it for code that can do without (``"dedup"``, ``"ordered_by_key"``, ``"replay"``...), or is
    None where the backend does not say.
    """

    def __init__(self, *args: object, feature: str | None = None) -> None:
        super().__init__(*args)
        self.feature = feature


class NotFound(RingbusError, LookupError):
    """A queue, topic subscription or service the call names does not exist."""
