"""The ringbus wire format (a versioned header frame, then zero-copy body frames) and the body serializers."""

from __future__ import annotations

import enum
import math
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
import numpy as np
from numpy.lib import format as npformat

from ringbus.errors import ProtocolError
from ringbus.message import HeaderValue, Message

__all__ = [
    "MAGIC",
    "VERSION",
    "MAX_HEADER_SIZE",
    "INLINE",
    "INLINE_MAX",
    "BYTES",
    "TEXT",
    "JSON",
    "MSGPACK",
    "NDARRAY",
    "PICKLE",
    "Serializer",
    "encode",
    "decode",
    "dumps",
    "loads",
    "message",
]

# --- wire constants (docs/protocol.md is the specification) -------------------------------

MAGIC = b"RB"
VERSION = 1
MAX_HEADER_SIZE = 64 * 1024
"""A header frame longer than this many bytes (prefix included) is refused."""

INLINE = 0x01
"""Header flag: the body travels inside the header frame (a 12th envelope element), no body frames."""
INLINE_MAX = 16 * 1024
"""Bodies up to this many bytes are sent inline by default: one frame instead of two.

A ZeroMQ frame costs pyzmq about a microsecond, copying 16 KiB into the header a
fraction of that; and pyzmq copies frames below 64 KiB anyway."""

_PREFIX = MAGIC + bytes((VERSION, 0))  # magic, version, flags
_PREFIX_INLINE = MAGIC + bytes((VERSION, INLINE))
_PREFIX_SIZE = len(_PREFIX)

# --- content types -------------------------------------------------------------------------

BYTES = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
MSGPACK = "application/msgpack"
NDARRAY = "application/x-ndarray"
PICKLE = "application/python-pickle"

Serializer: TypeAlias = Literal["bytes", "str", "json", "msgpack", "numpy", "pickle"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1  # MessagePack ints span int64 and uint64
_HEADER_EXACT: frozenset[type] = frozenset((str, int, float, bool, type(None)))
_STR: frozenset[type] = frozenset((str,))
_INT: frozenset[type] = frozenset((int,))
_STR_OR_NONE: frozenset[type] = frozenset((str, type(None)))
_BYTES_LIKE = (bytes, bytearray, memoryview)
_BytesLike: TypeAlias = bytes | bytearray | memoryview


class _Header(msgspec.Struct, array_like=True, gc=False):
    # The header frame after its 4-byte prefix: one msgpack array, in this order.
    # A reader ignores extra trailing elements (room for additive extensions);
    # a change that old readers must not misread bumps VERSION instead.
    body_frames: Annotated[int, msgspec.Meta(ge=0)]
    id: Annotated[str, msgspec.Meta(min_length=1)]
    key: str | None
    priority: Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]
    headers: dict[str, HeaderValue]
    timestamp: float
    attempts: Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
    reply_to: str | None
    correlation_id: str | None
    content_type: str
    meta: dict[str, Any]
    # The body, with the INLINE flag only; without it a 12th element is an
    # extension to ignore, whatever its type (checked in decode).
    inline_body: Any = None


_header_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)


# --- frames --------------------------------------------------------------------------------


def encode(message: Message, *, inline_max: int = INLINE_MAX) -> list[bytes | memoryview]:
    """Encode a message as ZeroMQ multipart frames.

    Parameters
    ----------
    message : Message
        The message to send.
    inline_max : int
        A body of at most this many bytes travels inside the header frame (the
        INLINE flag): one frame instead of two. -1 never inlines.

    Returns
    -------
    list of bytes or memoryview
        ``[header]`` for an inline body; otherwise ``[header, body]``: the
        header frame, then the body itself (bytes) or a memoryview over it -
        never a copy, so pass ``copy=False`` to ``send_multipart`` for large
        bodies and do not mutate the body until sent. A non-contiguous
        memoryview body is the one case that is copied.

    Raises
    ------
    TypeError
        If an envelope field has the wrong type (the message names the field).
    ValueError
        If an integer is out of the 64-bit range or the header exceeds
        :data:`MAX_HEADER_SIZE`.
    """
    m = message
    # Checked on the sender, where a mistake can still be fixed: the receiver
    # could only drop the message. Exact type tests inline are the cheapest check
    # (measured: ~2x cheaper than one tuple(map(type, ...)) lookup); anything
    # unusual takes the slow path, which accepts enum members and names a bad field.
    if not (
        str is type(m.id) is type(m.content_type)
        and m.id
        and type(m.key) in _STR_OR_NONE
        and type(m.reply_to) in _STR_OR_NONE
        and type(m.correlation_id) in _STR_OR_NONE
        and int is type(m.priority) is type(m.attempts)
        and _INT64_MIN <= m.priority <= _INT64_MAX
        and 0 <= m.attempts <= _INT64_MAX
        and type(m.timestamp) is float
        and dict is type(m.headers) is type(m.meta)
        and (not m.headers or _plain_headers(m.headers))
    ):
        _check_envelope(m)
    body = m.body
    inline = (type(body) is bytes or type(body) is bytearray) and len(body) <= inline_max
    if inline:
        envelope: tuple[Any, ...] = (0, m.id, m.key, m.priority, m.headers, m.timestamp, m.attempts,
                                     m.reply_to, m.correlation_id, m.content_type, m.meta, body)
    else:
        envelope = (1, m.id, m.key, m.priority, m.headers, m.timestamp, m.attempts,
                    m.reply_to, m.correlation_id, m.content_type, m.meta)
    try:
        packed = _header_encoder.encode(envelope)
    except (TypeError, OverflowError) as exc:
        # Only meta can hold arbitrary values here: the other fields are checked above.
        raise TypeError(f"Message meta cannot be encoded as msgpack: {exc}") from None
    if inline:
        if len(packed) + _PREFIX_SIZE <= MAX_HEADER_SIZE:
            return [_PREFIX_INLINE + packed]
        return encode(message, inline_max=-1)  # a large envelope: the body goes in its own frame
    if len(packed) + _PREFIX_SIZE > MAX_HEADER_SIZE:
        raise ValueError(
            f"Message envelope encodes to {len(packed) + _PREFIX_SIZE} bytes, over the "
            f"{MAX_HEADER_SIZE}-byte header limit; move large headers or meta into the body"
        )
    return [_PREFIX + packed, _body_frame(m.body)]


def _plain_headers(headers: dict[Any, Any]) -> bool:
    for name, value in headers.items():
        kind = type(value)
        if type(name) is not str or kind not in _HEADER_EXACT:
            return False
        if kind is int and not _INT64_MIN <= value <= _UINT64_MAX:
            return False
    return True


def _body_frame(body: bytes | bytearray | memoryview) -> bytes | memoryview:
    if type(body) is bytes:
        return body
    if not isinstance(body, _BYTES_LIKE):
        raise TypeError(f"Message body must be bytes, bytearray or memoryview, not {type(body).__name__}")
    view = memoryview(body)
    if view.ndim == 1 and view.itemsize == 1 and view.c_contiguous:
        return view
    if view.c_contiguous:
        return view.cast("B")
    return view.tobytes()  # ZeroMQ sends one contiguous buffer per frame


def _check_envelope(m: Message) -> None:
    # The slow path of encode: find the bad field and say what is wrong with it.
    # msgspec encodes enum members as their values but no other subclasses of
    # str, int or float, so those are refused here rather than half-encoded.
    if not _plain(m.id, _STR) or not m.id:
        _field_error("id", m.id, "a non-empty str")
    for name in ("key", "reply_to", "correlation_id"):
        value = getattr(m, name)
        if value is not None and not _plain(value, _STR):
            _field_error(name, value, "a str or None")
    if not _plain(m.content_type, _STR):
        _field_error("content_type", m.content_type, "a str")
    for name, low, limits in (("priority", _INT64_MIN, "-2**63 <="), ("attempts", 0, "0 <=")):
        value = getattr(m, name)
        if not _plain(value, _INT):
            _field_error(name, value, "an int")
        if not low <= value <= _INT64_MAX:
            raise ValueError(f"Message {name} {value} is out of range: {limits} {name} < 2**63")
    if type(m.timestamp) not in (float, int):
        _field_error("timestamp", m.timestamp, "a float (unix seconds)")
    if not isinstance(m.headers, dict):
        _field_error("headers", m.headers, "a dict")
    for key, value in m.headers.items():
        if not _plain(key, _STR):
            raise TypeError(f"Message header names must be str, not {type(key).__name__} ({key!r:.80})")
        if not _plain(value, _HEADER_EXACT):
            raise TypeError(
                f"Message header {key!r} must be a str, int, float, bool or None, not {type(value).__name__}"
            )
        if isinstance(value, int) and not _INT64_MIN <= value <= _UINT64_MAX:
            raise ValueError(f"Message header {key!r} = {value} is out of range: -2**63 <= value < 2**64")
    if not isinstance(m.meta, dict):
        _field_error("meta", m.meta, "a dict")


def _plain(value: object, kinds: frozenset[type]) -> bool:
    return type(value) in kinds or (isinstance(value, enum.Enum) and type(value.value) in kinds)


def _field_error(name: str, value: object, expected: str) -> None:
    raise TypeError(f"Message {name} must be {expected}, not {type(value).__name__} ({value!r:.80})")


def decode(frames: Sequence[Any], *, copy: bool = True) -> Message:
    """Decode ZeroMQ multipart frames into a message.

    Parameters
    ----------
    frames : sequence of bytes, bytearray, memoryview or zmq.Frame
        What ``recv_multipart`` returned: the header frame, then the body frames.
    copy : bool
        If true the body is ``bytes``. If false a single body frame is kept as is:
        a ``bytes`` frame stays bytes, anything else becomes a memoryview over
        the received frame (which it keeps alive) - no copy. Several body frames
        are always joined into one ``bytes``.

    Returns
    -------
    Message
        The message; it has no settle handle (a Bus attaches one).

    Raises
    ------
    ringbus.ProtocolError
        For any input that is not a valid frame list (and only for that): no
        frames, a frame that is not a buffer, a bad magic, an unsupported
        version or flag, a truncated, garbled or oversized header, a field of
        the wrong type, or a body frame count that differs from the header's.
    """
    if type(frames) is not list and type(frames) is not tuple:
        try:
            frames = list(frames)
        except TypeError:
            raise ProtocolError(f"frames must be a list of frames, not {type(frames).__name__}") from None
    count = len(frames)
    if count < 1:
        raise ProtocolError("too few frames: a ringbus message needs a header frame and its body frames, got none")
    header: bytes | memoryview = frames[0]
    if type(header) is not bytes:
        header = _frame_view(header, 0)
    size = len(header)
    if size > MAX_HEADER_SIZE:
        raise ProtocolError(f"header frame of {size} bytes is over the {MAX_HEADER_SIZE}-byte limit")
    if size < _PREFIX_SIZE:
        raise ProtocolError(f"truncated header: {size} bytes, shorter than the {_PREFIX_SIZE}-byte prefix")
    prefix = header[:_PREFIX_SIZE]
    inline = prefix == _PREFIX_INLINE
    if not inline and prefix != _PREFIX:  # magic, version and flags in one comparison
        _bad_prefix(header)
    try:
        h = _header_decoder.decode(header[_PREFIX_SIZE:])
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"bad header field: {_name_fields(str(exc))}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # UnicodeDecodeError: a str that is not UTF-8; RecursionError: msgspec's
        # depth guard against deeply nested meta arrays.
        raise ProtocolError(f"garbled or truncated header: {exc}") from None
    body: bytes | memoryview
    if inline:
        if type(h.inline_body) is not bytes or h.body_frames != 0 or count != 1:
            raise ProtocolError(
                "inline body mismatch: the INLINE flag needs a 12th envelope element (the body), "
                f"body_frames 0 and no body frames; got body_frames {h.body_frames}, {count - 1} body frame(s)"
                + ("" if type(h.inline_body) is bytes else f" and a {type(h.inline_body).__name__} body")
            )
        body = h.inline_body
    elif h.body_frames != count - 1:
        raise ProtocolError(
            f"frame count mismatch: the header declares {h.body_frames} body frame(s), "
            f"but {count - 1} followed it"
        )
    elif count == 2:
        frame = frames[1]
        if type(frame) is bytes:
            body = frame
        else:
            view = _frame_view(frame, 1)
            body = bytes(view) if copy else view
    elif count == 1:
        body = b""
    else:
        body = b"".join([_frame_view(frames[i], i) for i in range(1, count)])
    return Message(
        body,
        id=h.id,
        key=h.key,
        priority=h.priority,
        headers=h.headers,
        timestamp=h.timestamp,
        attempts=h.attempts,
        reply_to=h.reply_to,
        correlation_id=h.correlation_id,
        content_type=h.content_type,
        meta=h.meta,
    )


def _bad_prefix(header: bytes | memoryview) -> None:
    if header[:2] != MAGIC:
        raise ProtocolError(
            f"bad magic {bytes(header[:2])!r} in the header frame: not a ringbus message (expected {MAGIC!r})"
        )
    if header[2] != VERSION:
        raise ProtocolError(f"unsupported protocol version {header[2]}: this reader speaks version {VERSION} only")
    raise ProtocolError(
        f"unknown header flags 0x{header[3]:02x}: version {VERSION} defines only 0x{INLINE:02x} (INLINE)"
    )


_FIELD_INDEX = re.compile(r"\$\[(\d+)\]")


def _name_fields(error: str) -> str:
    # msgspec reports array positions ("at `$[3]`"); name the header field instead.
    names = _Header.__struct_fields__

    def name(match: re.Match[str]) -> str:
        index = int(match[1])
        return names[index] if index < len(names) else match[0]

    return _FIELD_INDEX.sub(name, error, count=1)


def _frame_view(frame: Any, index: int) -> memoryview:
    # memoryview covers bytes, bytearray, memoryview and zmq.Frame (its .buffer
    # is the same view) without copying.
    try:
        view = memoryview(frame)
    except (TypeError, ValueError, BufferError):
        raise ProtocolError(f"frame {index} ({type(frame).__name__}) is not a bytes-like buffer") from None
    if view.ndim == 1 and view.format == "B" and view.c_contiguous:
        return view
    if not view.c_contiguous:
        raise ProtocolError(f"frame {index} is not a contiguous buffer")
    try:
        return view.cast("B")
    except TypeError:
        raise ProtocolError(f"frame {index} ({type(frame).__name__}) is not a bytes-like buffer") from None


# --- serializers ---------------------------------------------------------------------------

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()
_MSGPACK_TYPES = (dict, list, int, float, bool, type(None))


def dumps(value: object, serializer: Serializer | None = None) -> tuple[_BytesLike, str, dict[str, Any]]:
    """Serialize a value into a message body.

    Parameters
    ----------
    value : object
        The value to serialize.
    serializer : {"bytes", "str", "json", "msgpack", "numpy", "pickle"}, optional
        By default chosen from the type of ``value``: bytes, bytearray and
        memoryview -> ``"bytes"``; str -> ``"str"``; ``numpy.ndarray`` ->
        ``"numpy"``; dict, list, int, float, bool and None -> ``"msgpack"``.
        Anything else must be named. ``"pickle"`` is never chosen by default.

    Returns
    -------
    body : bytes, bytearray or memoryview
        The body. Bytes-like values pass through untouched and a C-contiguous
        array is lent as a memoryview over its own memory: no copy.
    content_type : str
        The content type naming the serializer (e.g. ``"application/json"``).
    meta : dict
        Serializer parameters for :func:`loads` (``dtype`` and ``shape`` for numpy).

    Raises
    ------
    TypeError
        If ``value`` has no default serializer, or the named serializer cannot
        encode it (e.g. a numpy array of Python objects).
    ValueError
        If ``serializer`` is not one of the names above.
    """
    if serializer is None:
        if isinstance(value, _BYTES_LIKE):
            return value, BYTES, {}
        if isinstance(value, str):
            return value.encode("utf-8"), TEXT, {}
        if isinstance(value, np.ndarray):
            return _dump_ndarray(value)
        if isinstance(value, _MSGPACK_TYPES):
            return _dump_msgpack(value)
        raise TypeError(
            f"no default serializer for {type(value).__name__}: name one, e.g. "
            "serializer='json' or 'msgpack' for plain data, or 'pickle' for trusted Python peers"
        )
    if serializer == "bytes":
        if not isinstance(value, _BYTES_LIKE):
            raise TypeError(f"serializer 'bytes' takes bytes, bytearray or memoryview, not {type(value).__name__}")
        return value, BYTES, {}
    if serializer == "str":
        if not isinstance(value, str):
            raise TypeError(f"serializer 'str' takes a str, not {type(value).__name__}")
        return value.encode("utf-8"), TEXT, {}
    if serializer == "json":
        try:
            return _json_encoder.encode(value), JSON, {}
        except (TypeError, OverflowError) as exc:
            raise TypeError(f"serializer 'json' cannot encode {type(value).__name__}: {exc}") from None
    if serializer == "msgpack":
        return _dump_msgpack(value)
    if serializer == "numpy":
        if not isinstance(value, np.ndarray):
            raise TypeError(f"serializer 'numpy' takes a numpy.ndarray, not {type(value).__name__}")
        return _dump_ndarray(value)
    if serializer == "pickle":
        return pickle.dumps(value, protocol=5), PICKLE, {}
    raise ValueError(
        f"unknown serializer {serializer!r}: expected one of 'bytes', 'str', 'json', 'msgpack', 'numpy', 'pickle'"
    )


def _dump_msgpack(value: object) -> tuple[bytes, str, dict[str, Any]]:
    try:
        return _msgpack_encoder.encode(value), MSGPACK, {}
    except (TypeError, OverflowError) as exc:
        raise TypeError(f"serializer 'msgpack' cannot encode {type(value).__name__}: {exc}") from None


def _dump_ndarray(array: np.ndarray[Any, Any]) -> tuple[memoryview, str, dict[str, Any]]:
    dtype = array.dtype
    if dtype.hasobject:
        raise TypeError(
            f"serializer 'numpy' cannot send dtype {dtype}: it holds Python object references, "
            "not data; convert the array or name serializer='pickle'"
        )
    meta = {"dtype": _dtype_to_wire(dtype), "shape": list(array.shape)}
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)  # the one copy: ZeroMQ sends contiguous frames
    if dtype.itemsize == 0 or array.size == 0:
        return memoryview(b""), NDARRAY, meta
    # A flat uint8 view rather than memoryview(array): numpy cannot export some
    # dtypes (datetime64, some structured ones) through the buffer protocol.
    return array.reshape(-1).view(np.uint8).data, NDARRAY, meta


def _dtype_to_wire(dtype: np.dtype[Any]) -> Any:
    if dtype.subdtype is not None:
        # Only as a field of the dict form below (numpy flattens a top-level subarray dtype).
        base, shape = dtype.subdtype
        return {"subdtype": _dtype_to_wire(base), "shape": list(shape)}
    if dtype.names is None:
        return dtype.str
    try:
        # The descr of the .npy format: round-trips padding and nested fields.
        return npformat.dtype_to_descr(dtype)
    except ValueError:
        # Overlapping or out-of-order fields have no descr; numpy's dict form
        # (names, formats, offsets, itemsize) describes them exactly.
        fields: Mapping[str, Any] = dtype.fields or {}
        return {
            "names": list(dtype.names),
            "formats": [_dtype_to_wire(fields[name][0]) for name in dtype.names],
            "offsets": [fields[name][1] for name in dtype.names],
            "itemsize": dtype.itemsize,
        }


def loads(
    body: bytes | bytearray | memoryview,
    content_type: str,
    meta: dict[str, Any] | None = None,
    *,
    allow_pickle: bool = False,
) -> Any:
    """Deserialize a message body.

    Parameters
    ----------
    body : bytes, bytearray or memoryview
        The message body.
    content_type : str
        Names the serializer; media-type parameters other than ``charset`` are ignored.
    meta : dict, optional
        Serializer parameters (``dtype`` and ``shape`` for numpy).
    allow_pickle : bool
        Unpickle ``application/python-pickle`` bodies. Off by default:
        unpickling runs code chosen by the sender.

    Returns
    -------
    object
        Raw bytes are returned as the body itself; a numpy array is a view over
        the body (read-only when the body is ``bytes``; ``.copy()`` it to write).

    Raises
    ------
    ringbus.ProtocolError
        If the body does not decode, the content type is unknown or its
        parameters are bad, or the body is pickle and ``allow_pickle`` is false.
    """
    if content_type == BYTES:
        return body
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    try:
        if media == "text/plain":
            return str(body, _charset(params))
        if media == "application/json":
            return msgspec.json.decode(body)
        if media == "application/msgpack":
            return msgspec.msgpack.decode(body)
        if media == NDARRAY:
            return _load_ndarray(body, meta)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{media} body does not decode: {exc}") from None
    if media == PICKLE:
        if not allow_pickle:
            raise ProtocolError(
                "refusing to unpickle an application/python-pickle body: unpickling runs code "
                "chosen by the sender. Only for trusted senders, pass allow_pickle=True "
                "(msg.value(allow_pickle=True) or codec.loads(..., allow_pickle=True))"
            )
        try:
            return pickle.loads(body)
        except Exception as exc:  # a broken pickle can raise nearly anything
            raise ProtocolError(f"pickle body does not load: {type(exc).__name__}: {exc}") from exc
    if media == BYTES:
        return body
    raise ProtocolError(f"no serializer for content type {content_type!r}; msg.body holds the raw bytes")


def _charset(params: str) -> str:
    charset = "utf-8"
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if charset not in ("utf-8", "utf8"):
        raise ProtocolError(f"text/plain charset {charset!r} is not supported: ringbus text is utf-8")
    return "utf-8"


def _load_ndarray(body: bytes | bytearray | memoryview, meta: dict[str, Any] | None) -> np.ndarray[Any, Any]:
    if not isinstance(meta, dict) or "dtype" not in meta or "shape" not in meta:
        raise ProtocolError(f"{NDARRAY} body needs meta with 'dtype' and 'shape', got {meta!r:.200}")
    shape = meta["shape"]
    if not isinstance(shape, (list, tuple)) or not all(type(n) is int and n >= 0 for n in shape):
        raise ProtocolError(f"{NDARRAY} meta 'shape' must be a list of ints >= 0, got {shape!r:.200}")
    try:
        dtype = _dtype_from_wire(meta["dtype"])
    except ProtocolError:
        raise
    except Exception as exc:  # numpy parses untrusted text here; any failure is bad meta
        raise ProtocolError(f"{NDARRAY} meta 'dtype' {meta['dtype']!r:.200} is not a numpy dtype: {exc}") from None
    if dtype.hasobject:
        # Object arrays hold pointers: building one from received bytes would be unsafe.
        raise ProtocolError(f"{NDARRAY} dtype {dtype} holds Python objects and is refused")
    nbytes = len(body) if not isinstance(body, memoryview) else body.nbytes
    expected = math.prod(shape) * dtype.itemsize
    if nbytes != expected:
        raise ProtocolError(
            f"{NDARRAY} body has {nbytes} bytes, but shape {list(shape)} of dtype {dtype} needs {expected}"
        )
    if expected == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _dtype_from_wire(wire: Any) -> np.dtype[Any]:
    if isinstance(wire, str):
        return np.dtype(wire)
    if isinstance(wire, (list, tuple)):
        dtype: np.dtype[Any] = npformat.descr_to_dtype(_descr_from_wire(wire))
        return dtype
    if isinstance(wire, dict) and "subdtype" in wire:
        shape = wire.get("shape")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise ProtocolError(f"{NDARRAY} subdtype 'shape' must be a list of ints >= 0, got {shape!r:.200}")
        subarray: np.dtype[Any] = np.dtype((_dtype_from_wire(wire["subdtype"]), tuple(shape)))
        return subarray
    if isinstance(wire, dict):
        formats = wire.get("formats")
        if not isinstance(formats, list):
            raise ProtocolError(f"{NDARRAY} dtype dict needs a 'formats' list, got {wire!r:.200}")
        spec: Any = {
            "names": wire.get("names"),
            "formats": [_dtype_from_wire(f) for f in formats],
            "offsets": wire.get("offsets"),
            "itemsize": wire.get("itemsize"),
        }
        structured: np.dtype[Any] = np.dtype(spec)
        return structured
    raise ProtocolError(f"{NDARRAY} meta 'dtype' must be a str, a descr list or a dict, got {type(wire).__name__}")


def _descr_from_wire(descr: list[Any] | tuple[Any, ...]) -> list[tuple[Any, ...]]:
    # msgpack has no tuples: restore the (name, format[, shape]) tuples of a
    # .npy descr, where name may be a (title, name) pair and format a nested
    # descr. Tuples are accepted too: meta that never crossed the wire keeps them.
    fields: list[tuple[Any, ...]] = []
    for item in descr:
        if not isinstance(item, (list, tuple)) or len(item) not in (2, 3):
            raise ProtocolError(
                f"{NDARRAY} descr entry must be [name, format] or [name, format, shape], got {item!r:.200}"
            )
        name = tuple(item[0]) if isinstance(item[0], list) else item[0]
        fmt = _descr_from_wire(item[1]) if isinstance(item[1], (list, tuple)) else item[1]
        if len(item) == 3:
            shape = tuple(item[2]) if isinstance(item[2], list) else item[2]
            fields.append((name, fmt, shape))
        else:
            fields.append((name, fmt))
    return fields


def message(value: object, serializer: Serializer | None = None, **fields: Any) -> Message:
    """Serialize ``value`` into a new :class:`Message`; the same as :meth:`Message.of`.

    Parameters
    ----------
    value : object
        The value to send.
    serializer : str, optional
        As for :func:`dumps`.
    **fields
        Any other :class:`Message` field (``key``, ``priority``, ``headers``, ...).

    Returns
    -------
    Message
    """
    return Message.of(value, serializer, **fields)
