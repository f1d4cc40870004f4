"""Side-by-side timings behind two design choices: the wire header layout and the Message class.

Run: ``python benchmarks/header_layout.py`` (about 20 s). It times

1. encode + decode of one message with the chosen msgpack header (``ringbus.codec``)
   beside a fixed binary ``struct`` layout carrying the same fields;
2. creating a ``Message`` (a ``msgspec.Struct``) beside the same fields as a
   ``dataclass(slots=True)``.

Figures are medians of several rounds, quoted in docs/protocol.md as ratios.
"""

from __future__ import annotations

import os
import statistics
import struct
import time
import timeit
import uuid
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Callable

import msgspec

from ringbus import codec
from ringbus.message import HeaderValue, Message, new_id

# --- the struct candidate: fixed part, then utf-8 strings, then msgpack maps -------------
# magic, version, flags, body_frames, priority, timestamp, attempts,
# len(id), len(key), len(reply_to), len(correlation_id), len(content_type) (u16, 0xFFFF = None),
# len(headers), len(meta) (u32, 0 = empty map)
_FIXED = struct.Struct("<2sBBHqdIHHHHHII")
_NONE = 0xFFFF
_maps = msgspec.msgpack.Encoder()
_headers_decoder = msgspec.msgpack.Decoder(dict[str, HeaderValue])
_meta_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def _utf8(text: str | None) -> tuple[bytes, int]:
    if text is None:
        return b"", _NONE
    raw = text.encode()
    return raw, len(raw)


def struct_encode(m: Message) -> list[Any]:
    # the same sender-side checks as ringbus.codec.encode
    if not (
        str is type(m.id) is type(m.content_type)
        and m.id
        and type(m.key) in codec._STR_OR_NONE
        and type(m.reply_to) in codec._STR_OR_NONE
        and type(m.correlation_id) in codec._STR_OR_NONE
        and int is type(m.priority) is type(m.attempts)
        and codec._INT64_MIN <= m.priority <= codec._INT64_MAX
        and 0 <= m.attempts <= codec._INT64_MAX
        and type(m.timestamp) is float
        and dict is type(m.headers) is type(m.meta)
        and (not m.headers or codec._plain_headers(m.headers))
    ):
        codec._check_envelope(m)
    i, li = _utf8(m.id)
    k, lk = _utf8(m.key)
    r, lr = _utf8(m.reply_to)
    c, lc = _utf8(m.correlation_id)
    t, lt = _utf8(m.content_type)
    h = _maps.encode(m.headers) if m.headers else b""
    me = _maps.encode(m.meta) if m.meta else b""
    fixed = _FIXED.pack(b"RB", 1, 0, 1, m.priority, m.timestamp, m.attempts, li, lk, lr, lc, lt, len(h), len(me))
    return [b"".join((fixed, i, k, r, c, t, h, me)), m.body]


def _text(view: memoryview, pos: int, length: int) -> tuple[str | None, int]:
    if length == _NONE:
        return None, pos
    return str(view[pos : pos + length], "utf-8"), pos + length


def struct_decode(frames: list[Any]) -> Message:
    view = memoryview(frames[0])
    magic, _v, _f, _n, priority, ts, attempts, li, lk, lr, lc, lt, lh, lm = _FIXED.unpack_from(view)
    pos = _FIXED.size
    mid, pos = _text(view, pos, li)
    key, pos = _text(view, pos, lk)
    reply_to, pos = _text(view, pos, lr)
    corr, pos = _text(view, pos, lc)
    ctype, pos = _text(view, pos, lt)
    headers = _headers_decoder.decode(view[pos : pos + lh]) if lh else {}
    pos += lh
    meta = _meta_decoder.decode(view[pos : pos + lm]) if lm else {}
    return Message(frames[1], id=mid or "", key=key, priority=priority, headers=headers, timestamp=ts,
                   attempts=attempts, reply_to=reply_to, correlation_id=corr, content_type=ctype or "",
                   meta=meta)


# --- the dataclass candidate for Message ---------------------------------------------------


@dataclass(slots=True)
class DataclassMessage:
    body: bytes | bytearray | memoryview
    _: KW_ONLY
    id: str = field(default_factory=new_id)
    key: str | None = None
    priority: int = 0
    headers: dict[str, HeaderValue] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    attempts: int = 0
    reply_to: str | None = None
    correlation_id: str | None = None
    content_type: str = "application/octet-stream"
    meta: dict[str, Any] = field(default_factory=dict)
    _settle: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.body, (bytes, bytearray, memoryview)):
            raise TypeError("body")


def bind(fn: Callable[[Any], object], arg: Any) -> Callable[[], object]:
    """fn(arg) as a zero-argument callable.

    A closure, not functools.partial: in CPython 3.11 a partial around a Python
    function measured ~0.6 us slower per call, which would swamp the figures.
    """
    return lambda: fn(arg)


def medians_ns(contenders: dict[str, Callable[[], object]], number: int = 20_000, rounds: int = 9) -> dict[str, float]:
    """Median ns per call of each contender; rounds alternate between contenders so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(timeit.timeit(fn, number=number) / number * 1e9)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    body = os.urandom(64)
    cases = {
        "64 B body, no headers": Message(body),
        "64 B body, 3 headers": Message(body, key="order-42",
                                        headers={"trace": "4bf92f3577b34da6", "retries": 3, "urgent": True}),
    }
    print("header layout: encode + decode of one message (median ns)")
    layouts = {"msgpack": (codec.encode, codec.decode), "struct": (struct_encode, struct_decode)}
    for name, msg in cases.items():
        contenders: dict[str, Callable[[], object]] = {}
        sizes = {}
        for label, (enc, dec) in layouts.items():
            frames = enc(msg)
            if dec(frames) != msg:
                raise SystemExit(f"{label} does not round-trip {name}")
            sizes[label] = len(frames[0])
            contenders[f"{label} encode"] = bind(enc, msg)
            contenders[f"{label} decode"] = bind(dec, frames)
        t = medians_ns(contenders)
        total = {label: t[f"{label} encode"] + t[f"{label} decode"] for label in layouts}
        for label in layouts:
            print(f"  {name:24s} {label:8s} header {sizes[label]:3d} B  "
                  f"encode {t[label + ' encode']:5.0f}  decode {t[label + ' decode']:5.0f}  sum {total[label]:5.0f}")
        print(f"  {name:24s} struct / msgpack time: {total['struct'] / total['msgpack']:.2f}")
    print("Message creation (median ns)")
    variants: list[tuple[str, dict[str, Any]]] = [
        ("defaults (new id, time)", {}),
        ("all fields given (as on receipt)", {
            "id": "x", "key": None, "priority": 0, "headers": {}, "timestamp": 1.0, "attempts": 0,
            "reply_to": None, "correlation_id": None, "content_type": "a", "meta": {},
        }),
    ]
    for label, given in variants:
        t = medians_ns({"struct": bind(lambda b: Message(b, **given), body),
                        "dataclass": bind(lambda b: DataclassMessage(b, **given), body)}, number=50_000)
        print(f"  {label:32s} msgspec.Struct {t['struct']:5.0f}  dataclass(slots) {t['dataclass']:5.0f}  "
              f"ratio {t['dataclass'] / t['struct']:.2f}")
    print("id generation (median ns)")
    t = medians_ns({"new_id": new_id, "uuid4": lambda: uuid.uuid4().hex}, number=50_000)
    print(f"  new_id {t['new_id']:5.0f}  uuid.uuid4().hex {t['uuid4']:5.0f}  ratio {t['uuid4'] / t['new_id']:.1f}")

if __name__ == "__main__":
    main()
