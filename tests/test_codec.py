"""Wire format and serializers: round trips, zero copy, sender-side checks, and hostile frames."""

from __future__ import annotations

import collections
import enum
import pathlib
import pickle
from typing import Any

import msgspec
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringbus import codec
from ringbus.codec import decode, dumps, encode, loads
from ringbus.errors import ProtocolError
from ringbus.message import Message

MAGIC = b"RB"
PREFIX = b"RB\x01\x00"


def envelope(**changes: Any) -> list[Any]:
    """A valid version-1 envelope array, with some elements replaced by name."""
    fields = {
        "body_frames": 1, "id": "0123456789abcdef0123456789abcdef", "key": None, "priority": 0,
        "headers": {}, "timestamp": 1700000000.25, "attempts": 0, "reply_to": None,
        "correlation_id": None, "content_type": "application/octet-stream", "meta": {},
    }
    fields.update(changes)
    return list(fields.values())


def header(*elements: Any, prefix: bytes = PREFIX) -> bytes:
    return prefix + msgspec.msgpack.encode(list(elements) if elements else envelope())


# A valid envelope whose meta is an array nested 60 000 deep: msgspec's recursion guard.
DEEP_META = (PREFIX + b"\x9b\x01\xa1x\xc0\x00\x80\xcb" + bytes(8) + b"\x00\xc0\xc0\xa1t\x81\xa1m"
             + b"\x91" * 60_000 + b"\x90")


def encode_framed(message: Message) -> list[Any]:
    """Encode with the body in its own frame (never inline), as large bodies travel."""
    return encode(message, inline_max=-1)


def full_message() -> Message:
    return Message(
        b"the body", key="order-42", priority=-7,
        headers={"s": "x", "i": -(2**63), "f": 2.5, "b": False, "n": None},
        attempts=3, reply_to="replies", correlation_id="req-9", content_type="application/json",
        meta={"nested": [1, {"a": "b"}]},
    )


# --------------------------------------------------------------------------- frames round trip


def test_round_trip_keeps_every_field():
    msg = full_message()
    frames = encode_framed(msg)
    assert len(frames) == 2
    assert frames[0][:4] == PREFIX
    back = decode(frames)
    assert back == msg
    assert type(back.body) is bytes
    assert back._settle is None


def test_round_trip_through_a_zmq_socket_without_copies():
    msg = full_message()
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        for sock in (push, pull):
            sock.setsockopt(zmq.LINGER, 0)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        push.send_multipart(encode_framed(msg), copy=False)
        assert pull.poll(10_000), "nothing arrived within 10 s"
        frames = pull.recv_multipart(copy=False)
        back = decode(frames, copy=False)
        assert back == msg
        assert isinstance(back.body, memoryview)
        assert back.body.obj is frames[1]  # a view over the received frame, no copy
        assert type(decode(frames).body) is bytes
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()


def test_decode_accepts_zmq_frames_bytearrays_and_memoryviews():
    msg = full_message()
    head, body = encode_framed(msg)
    for kind in (zmq.Frame, bytearray, memoryview, bytes):
        frames = [kind(bytes(head)), kind(bytes(body))]
        assert decode(frames) == msg
        assert decode(tuple(frames), copy=False) == msg


def test_copy_false_body_is_a_view_of_the_frame():
    head, _ = encode_framed(Message(b""))
    frame = bytearray(b"mutable")
    back = decode([head, frame], copy=False)
    assert isinstance(back.body, memoryview) and back.body.obj is frame
    assert decode([head, frame], copy=True).body == b"mutable"
    assert type(decode([head, frame], copy=True).body) is bytes


def test_bytes_frames_are_used_as_they_are():
    head, _ = encode_framed(Message(b""))
    body = b"immutable already"
    assert decode([head, body]).body is body
    assert decode([head, body], copy=False).body is body


def test_header_declares_the_body_frame_count():
    assert decode([header(*envelope(body_frames=0))]).body == b""
    back = decode([header(*envelope(body_frames=3)), b"ab", bytearray(b"cd"), zmq.Frame(b"ef")], copy=False)
    assert back.body == b"abcdef"


def test_extra_trailing_envelope_elements_are_ignored():
    back = decode([header(*envelope(key="k"), "a future field", 42), b"x"])
    assert back.key == "k" and back.body == b"x"


def test_readers_accept_non_minimal_msgpack_and_int_timestamps():
    # A plain writer may use fixed-width encodings (int 64, str 32) and an int timestamp.
    import struct

    def s32(text: str) -> bytes:
        return b"\xdb" + struct.pack(">I", len(text)) + text.encode()

    env = (b"\x9b" + b"\xd3" + struct.pack(">q", 1) + s32("id-1") + b"\xc0" + b"\xd3" + struct.pack(">q", 9)
           + b"\x80" + b"\xd3" + struct.pack(">q", 1700000000) + b"\xcc\x00" + b"\xc0\xc0" + s32("text/plain")
           + b"\x80")
    back = decode([PREFIX + env, b"hi"])
    assert (back.id, back.priority, back.timestamp, back.content_type) == ("id-1", 9, 1700000000.0, "text/plain")
    assert isinstance(back.timestamp, float)


# --------------------------------------------------------------------------- zero copy on send


def test_bytes_body_is_sent_as_itself():
    body = b"x" * 1000
    assert encode_framed(Message(body))[1] is body


def test_bytearray_body_is_sent_as_a_view():
    body = bytearray(b"x" * 1000)
    frame = encode_framed(Message(body))[1]
    assert isinstance(frame, memoryview) and frame.obj is body


def test_memoryview_body_is_sent_without_copy():
    source = bytearray(range(256))
    view = memoryview(source)[10:50]
    frame = encode(Message(view))[1]
    assert isinstance(frame, memoryview) and frame.obj is source
    assert bytes(frame) == bytes(source[10:50])
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    frame = encode(Message(memoryview(array)))[1]
    assert np.shares_memory(np.frombuffer(frame, dtype=np.uint8), array)
    assert len(frame) == array.nbytes


def test_non_contiguous_memoryview_body_is_copied_once():
    array = np.arange(10, dtype=np.uint8)
    frame = encode(Message(memoryview(array)[::2]))[1]
    assert bytes(frame) == bytes(array[::2])


def test_numpy_body_frame_shares_the_arrays_memory():
    array = np.arange(1000, dtype=np.float32).reshape(10, 100)
    frames = encode(Message.of(array))
    assert np.shares_memory(np.frombuffer(frames[1], dtype=np.uint8), array)


# --------------------------------------------------------------------------- sender-side checks


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 5), ("id", ""), ("key", 5), ("reply_to", b"x"), ("correlation_id", 1.0), ("content_type", None),
        ("priority", "high"), ("priority", 1.5), ("priority", True), ("attempts", "1"), ("timestamp", "now"),
        ("headers", [("a", 1)]), ("meta", None), ("body", "text"),
    ],
)
def test_encode_names_a_field_of_the_wrong_type(field, value):
    msg = Message(b"")
    setattr(msg, field, value)
    with pytest.raises(TypeError, match=field):
        encode(msg)


@pytest.mark.parametrize("value", [[1], {"a": 1}, b"bytes", object()])
def test_encode_refuses_a_header_value_of_the_wrong_type(value):
    with pytest.raises(TypeError, match="'bad'"):
        encode(Message(b"", headers={"ok": 1, "bad": value}))


def test_encode_refuses_a_header_name_that_is_not_a_str():
    with pytest.raises(TypeError, match="header names"):
        encode(Message(b"", headers={1: "x"}))  # type: ignore[dict-item]


@pytest.mark.parametrize(("field", "value"), [("priority", 2**63), ("priority", -(2**63) - 1), ("attempts", -1)])
def test_encode_refuses_out_of_range_ints(field, value):
    msg = Message(b"")
    setattr(msg, field, value)
    with pytest.raises(ValueError, match=field):
        encode(msg)


def test_header_ints_span_int64_and_uint64():
    headers = {"low": -(2**63), "high": 2**64 - 1}
    assert decode(encode(Message(b"", headers=headers))).headers == headers
    for value in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="'big'"):
            encode(Message(b"", headers={"big": value}))


def test_encode_refuses_meta_msgpack_cannot_carry():
    with pytest.raises(TypeError, match="meta"):
        encode(Message(b"", meta={"x": object()}))


def test_encode_refuses_an_oversized_header():
    with pytest.raises(ValueError, match="header limit"):
        encode(Message(b"", headers={"big": "x" * codec.MAX_HEADER_SIZE}))


def test_encode_accepts_enum_members_and_dict_subclasses():
    class Level(enum.IntEnum):
        HIGH = 9

    class Kind(str, enum.Enum):
        A = "a"

    headers = collections.OrderedDict(level=Level.HIGH)
    back = decode(encode(Message(b"", priority=Level.HIGH, key=Kind.A, headers=headers)))
    assert back.priority == 9 and back.key == "a" and back.headers == {"level": 9}


@pytest.mark.parametrize(("field", "value"), [("key", type("Sub", (str,), {})("k")), ("priority", np.int64(1))])
def test_encode_refuses_subclasses_msgpack_cannot_carry(field, value):
    msg = Message(b"")
    setattr(msg, field, value)
    with pytest.raises(TypeError, match=field):
        encode(msg)


# --------------------------------------------------------------------------- hostile frames


def test_protocol_error_is_a_value_error():
    assert issubclass(ProtocolError, ValueError)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "too few frames"),
        ([b"XX\x01\x00" + header()[4:], b""], "bad magic"),
        ([b"", b""], "truncated header"),
        ([b"RB\x01", b""], "truncated header"),
        ([header()[:-5], b""], "truncated"),
        ([PREFIX + b"\xc1\xc1\xc1", b""], "garbled"),
        ([PREFIX, b""], "garbled or truncated"),
        ([PREFIX + b"\x93\x01\x02\x03", b""], "bad header field"),  # too few elements
        ([header(prefix=b"RB\x02\x00"), b""], "unsupported protocol version 2"),
        ([header(prefix=b"RB\x00\x00"), b""], "unsupported protocol version 0"),
        ([header(prefix=b"RB\xff\x00"), b""], "unsupported protocol version 255"),
        ([header(prefix=b"RB\x01\x80"), b""], "flags"),
        ([header()], "frame count mismatch"),
        ([header(), b"", b""], "frame count mismatch"),
        ([header(*envelope(body_frames=3)), b"", b""], "declares 3"),
        ([header(*envelope(meta={"pad": "x" * codec.MAX_HEADER_SIZE})), b""], "limit"),
        ([header(*envelope(priority="high")), b""], "priority"),
        ([header(*envelope(priority=2**63)), b""], "priority"),
        ([header(*envelope(id=5)), b""], "id"),
        ([header(*envelope(id="")), b""], "id"),
        ([header(*envelope(key=5)), b""], "key"),
        ([header(*envelope(headers={"a": [1]})), b""], "headers"),
        ([header(*envelope(headers={1: "a"})), b""], "headers"),
        ([header(*envelope(headers=[])), b""], "headers"),
        ([header(*envelope(timestamp="now")), b""], "timestamp"),
        ([header(*envelope(attempts=-1)), b""], "attempts"),
        ([header(*envelope(reply_to=b"bytes")), b""], "reply_to"),
        ([header(*envelope(correlation_id=[])), b""], "correlation_id"),
        ([header(*envelope(content_type=None)), b""], "content_type"),
        ([header(*envelope(meta=[])), b""], "meta"),
        ([header(*envelope(body_frames=-1)), b""], "body_frames"),
        ([header(*envelope(body_frames="1")), b""], "body_frames"),
        ([PREFIX + msgspec.msgpack.encode({"not": "an array"}), b""], "bad header field"),
        ([PREFIX + b"\xdd\xff\xff\xff\xff", b""], "truncated"),  # claims 4 billion elements
        ([DEEP_META, b""], "recursion depth"),
        (["text", b""], "frame 0"),
        ([None, b""], "frame 0"),
        ([header(), 5], "frame 1"),
        ([header(), "text"], "frame 1"),
        ([memoryview(b"xRBxx\x01xx\x00" * 10)[1::2], b""], "frame 0"),
        (None, "list of frames"),
        (5, "list of frames"),
    ],
)
def test_bad_frames_are_a_protocol_error(frames, match):
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


def test_header_at_the_size_limit_is_accepted():
    base = len(header(*envelope(meta={"pad": ""})))
    # str 16 encoding once the pad is over 255 bytes: 2 more length bytes
    pad = "x" * (codec.MAX_HEADER_SIZE - base - 2)
    frame = header(*envelope(meta={"pad": pad}))
    assert len(frame) == codec.MAX_HEADER_SIZE
    assert decode([frame, b""]).meta == {"pad": pad}
    with pytest.raises(ProtocolError, match="limit"):
        decode([header(*envelope(meta={"pad": pad + "x"})), b""])


def test_decode_names_the_field_in_nested_errors():
    with pytest.raises(ProtocolError, match=r"headers"):
        decode([header(*envelope(headers={"a": {"b": 1}})), b""])


VALID_HEADER = bytes(encode_framed(full_message())[0])
MSGPACK_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=10),
              st.binary(max_size=10)),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5) | st.integers(-9, 9), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def frame_lists(draw: st.DrawFn) -> list[Any]:
    """Random frame lists, most of them near misses of a valid one."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "count", "prefixed", "odd types", "fields"]))
    head: Any
    if kind == "fields":  # well-formed msgpack, but any element may hold any value
        elements = envelope()
        for _ in range(draw(st.integers(1, 3))):
            elements[draw(st.integers(0, len(elements) - 1))] = draw(MSGPACK_VALUES)
        elements = elements[: draw(st.integers(0, len(elements)))] + draw(st.lists(MSGPACK_VALUES, max_size=2))
        head = PREFIX + msgspec.msgpack.encode(elements)
    elif kind == "random":
        head = draw(st.binary(max_size=300))
    elif kind == "truncated":
        head = VALID_HEADER[: draw(st.integers(0, len(VALID_HEADER)))]
    elif kind == "flipped":
        data = bytearray(VALID_HEADER)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
        head = bytes(data)
    elif kind == "prefixed":
        head = PREFIX + draw(st.binary(max_size=300))
    elif kind == "odd types":
        head = draw(st.one_of(st.none(), st.integers(), st.text(max_size=20), st.just(VALID_HEADER)))
    else:
        head = VALID_HEADER
    wrap = draw(st.sampled_from([bytes, bytearray, memoryview, zmq.Frame]))
    if isinstance(head, bytes):
        head = wrap(head)
    body = st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(bytearray), st.none(), st.integers())
    rest = draw(st.lists(body, max_size=4)) if kind in ("count", "odd types") else [draw(st.binary(max_size=64))]
    return [head, *rest] if draw(st.integers(0, 20)) else []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frame_lists(), copy=st.booleans())
def test_decode_returns_a_message_or_raises_protocol_error(frames, copy):
    try:
        msg = decode(frames, copy=copy)
    except ProtocolError:
        return
    assert isinstance(msg, Message)
    # Whatever decode accepts, encode can send on unchanged (a broker forwards
    # messages). Compared as bytes: a NaN header never equals itself.
    frames = encode_framed(msg)
    again = encode_framed(decode(frames))
    assert bytes(again[0]) == bytes(frames[0]) and bytes(again[1]) == bytes(frames[1])


# --------------------------------------------------------------------------- serializers


@pytest.mark.parametrize("value", [b"raw", bytearray(b"raw"), memoryview(b"raw")])
def test_bytes_pass_through_untouched(value):
    body, content_type, meta = dumps(value)
    assert body is value
    assert (content_type, meta) == ("application/octet-stream", {})
    assert loads(body, content_type, meta) is value
    assert dumps(value, "bytes")[0] is value


def test_str_round_trip():
    text = "h\u00e9llo \u4e16\u754c \U0001f600"
    body, content_type, meta = dumps(text)
    assert content_type == "text/plain; charset=utf-8" and body == text.encode()
    assert loads(body, content_type, meta) == text
    assert loads(body, "text/plain") == text
    assert loads(memoryview(body), "Text/Plain; Charset=UTF-8") == text


def test_str_refuses_other_charsets_and_bad_utf8():
    with pytest.raises(ProtocolError, match="charset"):
        loads(b"abc", "text/plain; charset=latin-1")
    with pytest.raises(ProtocolError, match="does not decode"):
        loads(b"\xff\xfe", "text/plain; charset=utf-8")


PLAIN_DATA = [
    None, True, 0, -(2**63), 2**64 - 1, 1.5, "s", [], {}, {"a": [1, {"b": None}], "c": "d"}, [1, "x", 2.5],
]


@pytest.mark.parametrize("value", PLAIN_DATA)
@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_json_and_msgpack_round_trip(value, serializer):
    body, content_type, meta = dumps(value, serializer)
    assert content_type == {"json": "application/json", "msgpack": "application/msgpack"}[serializer]
    assert loads(body, content_type, meta) == value
    assert decode(encode(Message(body, content_type=content_type))).value() == value


@pytest.mark.parametrize("value", [None, True, 3, 2.5, [1], {"a": 1}])
def test_plain_data_defaults_to_msgpack(value):
    assert dumps(value)[1] == "application/msgpack"


def test_json_content_type_parameters_are_ignored():
    assert loads(b'{"a":1}', "application/json; charset=utf-8") == {"a": 1}


@pytest.mark.parametrize(("body", "content_type"), [(b"{", "application/json"), (b"\xc1", "application/msgpack"),
                                                    (b"[" * 100_000, "application/json")])
def test_undecodable_bodies_are_a_protocol_error(body, content_type):
    with pytest.raises(ProtocolError, match="does not decode"):
        loads(body, content_type)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_unencodable_values_are_a_type_error(serializer):
    with pytest.raises(TypeError, match=serializer):
        dumps({"x": object()}, serializer)


@pytest.mark.parametrize("value", [object(), (1, 2), {1, 2}, 1 + 2j, np.float32(1.0)])
def test_values_without_a_default_serializer_need_one_named(value):
    with pytest.raises(TypeError, match="serializer"):
        dumps(value)


@pytest.mark.parametrize(("value", "serializer"), [("s", "bytes"), (b"s", "str"), ([1], "numpy")])
def test_a_named_serializer_refuses_the_wrong_type(value, serializer):
    with pytest.raises(TypeError, match=serializer):
        dumps(value, serializer)


def test_unknown_serializer_and_content_type():
    with pytest.raises(ValueError, match="unknown serializer 'yaml'"):
        dumps(1, "yaml")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="no serializer for content type 'application/yaml'"):
        loads(b"a: 1", "application/yaml")


def test_message_helper_is_message_of():
    msg = codec.message([1, 2], "json", key="k")
    assert (msg.body, msg.content_type, msg.key) == (b"[1,2]", "application/json", "k")


# --------------------------------------------------------------------------- numpy


DTYPES = [
    np.dtype(t) for t in ("?", "i1", "u1", "<i2", ">u2", "<i4", ">i4", "<i8", "<u8", "<f2", "<f4", ">f8", "<c8",
                          "<c16", "<M8[ns]", "<m8[s]", "S5", "<U3", "V4")
] + [
    np.dtype([("x", "<f8"), ("n", "<i4")]),
    np.dtype([("a", "u1"), ("b", "<f8")], align=True),  # padding between fields
    np.dtype([("v", "<i2", (3,)), ("p", [("x", ">f4"), ("y", "u1")])]),  # subarray, nested struct
    np.dtype([(("a title", "t"), "<i4")]),
    np.dtype({"names": ["a"], "formats": ["u1"], "offsets": [3], "itemsize": 8}),  # leading + trailing padding
    np.dtype({"names": ["a", "b"], "formats": ["<i4", "<i2"], "offsets": [4, 0]}),  # out of order: dict form
    np.dtype({"names": ["v", "s"], "formats": [("<u2", (2, 2)), [("x", "u1"), ("y", ">i2")]],
              "offsets": [4, 0], "itemsize": 16}),  # dict form holding a subarray and a nested struct
]
SHAPES = [(), (0,), (7,), (2, 3, 4), (3, 0, 2)]


def random_array(dtype: np.dtype[Any], shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    count = int(np.prod(shape))
    data = np.random.default_rng(seed).bytes(count * dtype.itemsize)
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


def assert_exact(back: np.ndarray[Any, Any], array: np.ndarray[Any, Any]) -> None:
    assert back.dtype == array.dtype
    assert back.dtype.itemsize == array.dtype.itemsize
    assert back.dtype.fields == array.dtype.fields  # names, formats and offsets
    assert back.shape == array.shape
    if array.dtype.names is None:
        assert back.tobytes() == np.ascontiguousarray(array).tobytes()  # bit-exact, NaNs included
    else:
        # Field by field: numpy does not copy the padding between fields, so a
        # copied array's padding bytes are arbitrary.
        for name in array.dtype.names:
            assert_exact(back[name], array[name])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_numpy_round_trip_is_exact(dtype, shape):
    array = random_array(dtype, shape)
    body, content_type, meta = dumps(array)
    assert content_type == "application/x-ndarray"
    assert meta["shape"] == list(shape)
    assert bytes(body) == array.tobytes()  # the array's own bytes, padding included
    assert_exact(loads(body, content_type, meta), array)
    # and across the wire, where meta travels as msgpack
    assert_exact(decode(encode(Message(body, content_type=content_type, meta=meta)), copy=False).value(), array)


@pytest.mark.parametrize("dtype", [np.dtype("<f8"), DTYPES[-7], DTYPES[-1]], ids=str)
def test_numpy_non_contiguous_inputs_round_trip(dtype):
    array = random_array(dtype, (4, 6))
    for view in (np.asfortranarray(array), array[::2, 1::2], array.T):
        assert_exact(Message.of(view).value(), view)


def test_numpy_c_contiguous_body_is_the_arrays_own_memory():
    array = random_array(np.dtype([("x", "<f8"), ("n", "<i4")]), (50, 2))
    body, _, meta = dumps(array)
    assert isinstance(body, memoryview)
    assert np.shares_memory(np.frombuffer(body, dtype=np.uint8), array)
    assert meta["dtype"] == [["x", "<f8"], ["n", "<i4"]] or meta["dtype"] == [("x", "<f8"), ("n", "<i4")]


def test_numpy_loads_is_a_view_of_the_body():
    array = np.arange(10, dtype="<i8")
    body = bytearray(array.tobytes())
    back = loads(body, "application/x-ndarray", {"dtype": "<i8", "shape": [10]})
    assert np.shares_memory(back, np.frombuffer(body, dtype=np.uint8))
    back[0] = 99  # a writable body gives a writable array
    assert np.frombuffer(body, dtype="<i8")[0] == 99
    readonly = loads(bytes(body), "application/x-ndarray", {"dtype": "<i8", "shape": [10]})
    assert not readonly.flags.writeable


@pytest.mark.parametrize("dtype", [np.dtype(object), np.dtype([("a", "<i4"), ("o", object)])], ids=str)
def test_numpy_object_arrays_are_refused(dtype):
    with pytest.raises(TypeError, match="object"):
        dumps(np.zeros(3, dtype=dtype))


@pytest.mark.parametrize(
    ("meta", "body", "match"),
    [
        (None, b"", "needs meta"),
        ({"dtype": "<f8"}, b"", "needs meta"),
        ({"shape": [1]}, b"", "needs meta"),
        ({"dtype": "|O", "shape": [1]}, b"\x00" * 8, "Python objects"),
        ({"dtype": [["a", "|O"]], "shape": [1]}, b"\x00" * 8, "Python objects"),
        ({"dtype": "not a dtype", "shape": [1]}, b"", "not a numpy dtype"),
        ({"dtype": 5, "shape": [1]}, b"", "must be a str"),
        ({"dtype": [["a"]], "shape": [1]}, b"", "descr entry"),
        ({"dtype": [[1, 2, 3, 4]], "shape": [1]}, b"", "descr entry"),
        ({"dtype": [["a", "<f8", "x"]], "shape": [1]}, b"", "not a numpy dtype"),
        ({"dtype": {"names": ["a"]}, "shape": [1]}, b"", "formats"),
        ({"dtype": {"subdtype": "<f8", "shape": [-2]}, "shape": [1]}, b"", "subdtype"),
        ({"dtype": {"subdtype": "|O", "shape": [2]}, "shape": [1]}, b"\x00" * 16, "Python objects"),
        ({"dtype": {"names": ["a"], "formats": ["<f8"], "offsets": "x"}, "shape": [1]}, b"", "not a numpy dtype"),
        ({"dtype": "<f8", "shape": [-1]}, b"", "shape"),
        ({"dtype": "<f8", "shape": [True]}, b"", "shape"),
        ({"dtype": "<f8", "shape": "3"}, b"", "shape"),
        ({"dtype": "<f8", "shape": [2]}, b"\x00" * 8, "needs 16"),
        ({"dtype": "<f8", "shape": [2**62, 2**62]}, b"\x00" * 8, "needs"),
    ],
)
def test_numpy_bad_meta_is_a_protocol_error(meta, body, match):
    with pytest.raises(ProtocolError, match=match):
        loads(body, "application/x-ndarray", meta)


# --------------------------------------------------------------------------- pickle


class Explosive:
    """Unpickling this creates a marker file: proof that code from the sender ran."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_is_used_only_when_named():
    with pytest.raises(TypeError, match="pickle"):
        dumps(Explosive(pathlib.Path("unused")))
    body, content_type, meta = dumps({1, 2}, "pickle")
    assert content_type == "application/python-pickle"
    assert loads(body, content_type, meta, allow_pickle=True) == {1, 2}


@pytest.mark.parametrize(
    "content_type",
    ["application/python-pickle", "APPLICATION/PYTHON-PICKLE", "application/python-pickle; protocol=5"],
)
def test_a_crafted_pickle_never_runs_by_default(tmp_path, content_type):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Explosive(marker))
    msg = decode(encode(Message(payload, content_type=content_type)))
    with pytest.raises(ProtocolError, match="allow_pickle=True"):
        msg.value()
    with pytest.raises(ProtocolError, match="refusing to unpickle"):
        loads(payload, content_type)
    assert loads(payload, "application/octet-stream") is payload  # other content types never unpickle
    with pytest.raises(ProtocolError):
        loads(payload, "application/x-python-pickle")
    assert not marker.exists()
    # The payload is live: opting in runs it, which is why it is off by default.
    msg.value(allow_pickle=True)
    assert marker.exists()


def test_a_broken_pickle_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="pickle"):
        loads(b"\x80\x05garbage", "application/python-pickle", allow_pickle=True)


def test_small_body_travels_inline_in_one_frame():
    msg = full_message()
    frames = encode(msg)
    assert len(frames) == 1 and frames[0][:4] == MAGIC + bytes((codec.VERSION, codec.INLINE))
    assert decode(frames) == msg
    assert decode(frames, copy=False) == msg


def test_bodies_over_inline_max_get_their_own_frame():
    assert len(encode(Message(bytes(codec.INLINE_MAX)))) == 1
    assert len(encode(Message(bytes(codec.INLINE_MAX + 1)))) == 2
    assert len(encode(Message(b"abc"), inline_max=2)) == 2


def test_a_large_envelope_moves_the_body_out_of_the_header():
    msg = Message(bytes(1000), headers={"big": "x" * (codec.MAX_HEADER_SIZE - 600)})
    frames = encode(msg)
    assert len(frames) == 2 and decode(frames) == msg


def test_inline_flag_without_inline_body_or_with_body_frames_is_refused():
    inline_prefix = MAGIC + bytes((codec.VERSION, codec.INLINE))
    with pytest.raises(ProtocolError, match="inline body"):
        decode([inline_prefix + msgspec.msgpack.encode(envelope(body_frames=0))])
    with pytest.raises(ProtocolError, match="inline body"):
        decode([inline_prefix + msgspec.msgpack.encode([*envelope(body_frames=0), "not bytes"])])
    with pytest.raises(ProtocolError, match="inline body"):
        decode([encode(Message(b"x"))[0], b"extra body frame"])


def test_a_twelfth_element_without_the_inline_flag_is_an_extension_to_ignore():
    head = PREFIX + msgspec.msgpack.encode([*envelope(body_frames=1), "future field"])
    assert decode([head, b"body"]).body == b"body"
