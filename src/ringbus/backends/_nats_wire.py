"""Names, subjects and message bytes of the ``nats://`` backend: how ringbus things are spelt on NATS.

One queue is one JetStream stream. Its subjects hang under ``<prefix>q.<token>`` (``token``: the queue name with
``.`` spelt ``~``, so a queue is one subject token and ``orders`` never overlaps ``orders.dlq``): one subject per
priority level (``.0``, ``.5``, ``.-2``) and ``.d`` for delayed messages. The stream's name is that root with every
``.`` spelt ``~`` (stream names may not hold dots). Topics are subjects ``<prefix>t.<topic>``, services
``<prefix>s.<service token>``.

A message travels as one payload: the ringbus header frame (:func:`ringbus.codec.encode`) with the body inline, or,
for a body too large to inline, a 4-byte length, the header frame and the body. What NATS itself must read
(``Nats-Msg-Id``) or what changes while a message waits (its due time, its expiry) goes in NATS headers, so a
message without them - the common case - carries none.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import Any

import msgspec

from ringbus.codec import decode, encode
from ringbus.message import Message

__all__ = [
    "DEAD_FROM", "DEAD_REASON", "H_BODY", "H_DUE", "H_ERROR", "H_EXPIRES", "H_LEVEL", "H_MSG_ID", "UNSUPPORTED",
    "ApiError", "PubAck", "check_prefix", "consumer_of_level", "delivery_count", "group_consumer", "level_of",
    "pack", "parse_headers", "queue_of_stream", "subject_filters", "token", "unpack",
]

DEAD_REASON = "ringbus-dead-reason"
DEAD_FROM = "ringbus-dead-from"
H_MSG_ID = "Nats-Msg-Id"  # JetStream's own dedup header
H_DUE = "Rb-Due"  # wall time a delayed message becomes deliverable
H_LEVEL = "Rb-Level"  # the priority level a delayed message joins when due
H_EXPIRES = "Rb-Expires"  # wall time after which the message is dead-lettered as expired
H_BODY = "Rb-Body"  # the object-store name of a body too large for one NATS message
H_ERROR = "Rb-Error"  # a service handler's error, on its reply
DELAYED = "d"  # the subject token of a queue's delayed messages

UNSUPPORTED = {
    "ordered_by_key": "ordered_by_key: JetStream (2.9) has no message groups, and 'at most one unsettled message "
                      "per key' would need a consumer per key (max_ack_pending 1) created and found by every "
                      "receiver",
}

_LEN = struct.Struct(">I")
_PREFIX = re.compile(r"^(?:[A-Za-z0-9_\-:]+\.)*$")


def check_prefix(prefix: object) -> str:
    """``prefix`` as the subject prefix it names ('' or dot-terminated words), else ValueError naming it."""
    if not isinstance(prefix, str) or len(prefix) > 40:
        raise ValueError(f"prefix must be a str of at most 40 characters, got {prefix!r}")
    if prefix and not prefix.endswith("."):
        prefix += "."
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix must be words of letters, digits and _ - : separated and ended by dots "
                         f"(e.g. 'shop.'), got {prefix!r}")
    return prefix


def token(name: str) -> str:
    """A queue, group or service name as one subject token (and part of a stream or consumer name)."""
    return name.replace(".", "~")


def queue_of_stream(stream: str, stream_prefix: str) -> str | None:
    """The queue name of a queue stream of this namespace, or None for another stream."""
    if not stream.startswith(stream_prefix):
        return None
    return stream[len(stream_prefix):].replace("~", ".")


def consumer_of_level(level: int | str) -> str:
    """The durable pull consumer of one priority level (or of the delayed messages)."""
    return f"p{level}" if level != DELAYED else "delayed"


def group_consumer(group: str) -> str:
    return "g-" + token(group)


def level_of(subject: str) -> str:
    return subject[subject.rfind(".") + 1:]


def delivery_count(reply: str) -> int:
    """How often JetStream delivered the message whose ack subject is ``reply`` (``$JS.ACK...``)."""
    tokens = reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> (9 tokens), or the form with domain and
    # account hash in front of the stream (12 tokens, a trailing random token).
    return int(tokens[4] if len(tokens) == 9 else tokens[6])


def subject_filters(pattern: str) -> tuple[list[str], bool]:
    """The NATS subjects (relative to the topic root) that cover ringbus ``pattern``, and whether they are exact.

    ``*`` is NATS's ``*``. ``#`` (zero or more words) has no NATS twin: ``>`` is one or more words and only at the
    end. So ``a.#`` is ``a.>`` plus ``a`` itself (exact), and a ``#`` followed by more words becomes ``>`` after
    the words before it, which over-matches: the caller filters with :func:`ringbus.bus.topic_matcher`.
    """
    words = pattern.split(".")
    if "#" not in words:
        return [pattern], True
    first = words.index("#")
    before, after = words[:first], words[first + 1:]
    subjects = [".".join([*before, ">"])]
    if before and all(word == "#" for word in after):
        subjects.append(".".join(before))  # every '#' matching zero words
    return subjects, not after


def one_filter(subjects: list[str]) -> str:
    """One subject covering ``subjects`` (JetStream 2.9 consumers take a single filter): ``a.>`` for ``a.b.>``
    and ``a.b``."""
    if len(subjects) == 1:
        return subjects[0]
    words = subjects[1].split(".")
    return ".".join([*words[:-1], ">"])


def dedup_key(dedup_id: str) -> str:
    """``dedup_id`` as a Nats-Msg-Id: as given when it is plain printable ASCII, else its SHA-256."""
    if dedup_id.isascii() and dedup_id.isprintable() and 0 < len(dedup_id) <= 128:
        return dedup_id
    return "sha256:" + hashlib.sha256(dedup_id.encode()).hexdigest()


def pack(message: Message) -> bytes:
    """The payload of ``message``: its header frame with the body inline, or length + header + body."""
    frames = encode(message)
    if len(frames) == 1:
        return frames[0]  # type: ignore[return-value]
    header = frames[0]
    return b"".join((_LEN.pack(len(header)), header, frames[1]))


def unpack(payload: bytes) -> Message:
    """The Message in a payload made by :func:`pack` (ringbus.ProtocolError if it is not one)."""
    if payload[:2] == b"RB":
        return decode([payload])
    (size,) = _LEN.unpack_from(payload, 0)
    return decode([payload[4:4 + size], payload[4 + size:]])


def parse_headers(block: bytes) -> dict[str, str]:
    """The headers of a stored message's header block (``NATS/1.0\\r\\nName: value\\r\\n...``)."""
    headers = {}
    for line in block.decode("utf-8", "replace").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


class PubAck(msgspec.Struct):
    """JetStream's answer to a publish (or its error)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


class ApiError(Exception):
    """A JetStream API error answer (kept apart from ringbus errors until the caller decides what it means)."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.code = int(error.get("code", 0))
        self.err_code = int(error.get("err_code", 0))
        self.description = str(error.get("description", ""))
        super().__init__(f"JetStream error {self.code}/{self.err_code}: {self.description}")
