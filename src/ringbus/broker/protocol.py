"""The ringbus broker protocol's constants and frame helpers (docs/protocol.md, "Broker").

Client (DEALER) to broker (ROUTER)::

    [b"RBB1", command, request_id, args, *message frames]

Broker to client::

    [b"RBB1", status, request_id, payload, *message frames]

``args`` and ``payload`` are msgpack maps. ``status`` is ``OK``, ``ERR``
(payload ``{"type": ..., "message": ...}``) or ``EVT`` (an ephemeral
subscription's message, ``request_id`` = the subscription token). Messages
travel as :func:`ringbus.codec.encode` frames; where several follow, the map
says how many frames each takes (``"frames": [1, 2, ...]``); 0 means the
message is one small frame carried in the map's ``"inline"`` list instead
(a batch of small messages is one frame on the wire, not one each). An empty
``request_id`` asks for no reply (acks). Frames that start with an empty
delimiter and ``MDPC01``/``MDPW01`` are Majordomo (RFC 7) traffic on the same port.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ringbus.errors import Empty, Full, NotFound, ProtocolError, RingbusError, Unsupported

__all__ = ["SIGNATURE", "Command", "OK", "ERR", "EVENT", "error_payload", "raise_error", "pack", "unpack",
           "batch_frames", "split_batch"]

SIGNATURE = b"RBB1"

OK = b"OK"
ERR = b"ERR"
EVENT = b"EVT"


class Command:
    """Command names: short bytes, one handler each in the broker."""

    HELLO = b"HELLO"  # {session} -> {version, heartbeat, liveness}
    DECLARE = b"DECLARE"  # {name, options} -> {created}
    SEND = b"SEND"  # {queue, delay, ttl, dedup_id} + message -> {id}   (after the log write under the fsync policy)
    SEND_MANY = b"SENDN"  # {queue, frames, inline} + messages -> {ids}   (frames 0: the next of inline)
    FETCH = b"FETCH"  # {queue, max, wait} -> {tags, frames, inline} + messages   (waits up to wait s for one)
    # Settles: usually sent with an empty request id (no reply); with one, the reply is {stale: n}.
    ACK = b"ACK"  # {queue, tags}
    NACK = b"NACK"  # {queue, tags, requeue, delay}
    REJECT = b"REJECT"  # {queue, tags}
    RELEASE = b"REL"  # {queue, tags}: prefetched, never handed to the application; not an attempt
    PUBLISH = b"PUB"  # {topic} + message -> {id}; or {topic, frames, inline} + messages -> {ids}
    SUBSCRIBE = b"SUB"  # {pattern, group} -> {token}; then EVT messages
    UNSUBSCRIBE = b"UNSUB"  # {token} -> {}
    SUBSCRIPTION = b"SUBST"  # {token} -> {dropped}: what the broker lost for this subscriber
    GROUP = b"GROUP"  # {pattern, group, start} -> {queue}: a durable subscription group's queue
    CONSUMERS = b"CONS"  # {queue, delta, session} -> {}: consume iterators attached (+1) or gone (-1)
    STATS = b"STATS"  # {queue} -> QueueStats fields
    QUEUES = b"QUEUES"  # {} -> {queues}
    BROKER = b"BROKER"  # {} -> broker-wide figures (`ringbus stats`)
    HEARTBEAT = b"HB"  # {session} -> nothing; from the client's heartbeat socket
    BYE = b"BYE"  # {session} -> nothing: unsettled deliveries go back at once


_ERRORS: dict[str, type[Exception]] = {
    "NotFound": NotFound,
    "Full": Full,
    "Empty": Empty,
    "Unsupported": Unsupported,
    "ProtocolError": ProtocolError,
    "ValueError": ValueError,
    "TypeError": TypeError,
    "RingbusError": RingbusError,
}

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(dict)


def pack(value: dict[str, Any]) -> bytes:
    return _encoder.encode(value)


def unpack(frame: bytes | memoryview) -> dict[str, Any]:
    """Decode an args/payload frame; ProtocolError if it is not a msgpack map."""
    try:
        return _decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"arguments frame is not a msgpack map: {exc}") from None


def error_payload(exc: BaseException) -> bytes:
    """An ERR payload naming the exception's type (one the client maps back) and its text."""
    name = next((n for n, k in _ERRORS.items() if type(exc) is k), None)  # its own type, else the nearest base
    if name is None:
        name = next((n for n, k in _ERRORS.items() if isinstance(exc, k)), "RingbusError")
    return pack({"type": name, "message": str(exc)})


def raise_error(payload: dict[str, Any]) -> None:
    """Raise the exception an ERR payload describes."""
    kind = _ERRORS.get(str(payload.get("type")), RingbusError)
    raise kind(str(payload.get("message", "the broker refused the request")))


def batch_frames(encoded: list[list[Any]]) -> tuple[list[int], list[Any], list[Any]]:
    """Lay out several encoded messages: (frame counts, inline frames, other frames).

    A one-frame (small) message rides in the ``inline`` list of the arguments map (count 0): a batch of small
    messages is one ZeroMQ frame, not one each.
    """
    counts: list[int] = []
    inline: list[Any] = []
    frames: list[Any] = []
    for message in encoded:
        if len(message) == 1:
            counts.append(0)
            inline.append(message[0])
        else:
            counts.append(len(message))
            frames.extend(message)
    return counts, inline, frames


def split_batch(counts: object, inline: object, frames: list[Any]) -> list[list[Any]]:
    """The frames of each message of a batch laid out by :func:`batch_frames`; ProtocolError if they disagree."""
    if (not isinstance(counts, list) or not isinstance(inline, list)
            or not all(type(c) is int and c >= 0 for c in counts)
            or sum(counts) != len(frames) or counts.count(0) != len(inline)):
        inlined = len(inline) if isinstance(inline, list) else repr(inline)
        raise ProtocolError(f"a batch declares {counts!r} frames per message and {inlined} "
                            f"inline, but {len(frames)} frames followed")
    out = []
    at = 0
    small = iter(inline)
    for count in counts:
        if count:
            out.append(frames[at:at + count])
            at += count
        else:
            out.append([next(small)])
    return out
