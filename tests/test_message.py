"""Message: fields and defaults, body types, ids, settlement through a handle, value(), pickling."""

from __future__ import annotations

import math
import os
import pickle
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest

from ringbus.errors import ProtocolError, RingbusError
from ringbus.message import Message, new_id


class RecordingHandle:
    """A stand-in for the settle handle a Bus attaches: records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def ack(self, message: Message) -> None:
        self.calls.append(("ack", message))

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self.calls.append(("nack", message, requeue, delay))

    def reject(self, message: Message) -> None:
        self.calls.append(("reject", message))


# --------------------------------------------------------------------------- fields


def test_defaults():
    before = time.time()
    msg = Message(b"payload")
    after = time.time()
    assert msg.body == b"payload"
    assert msg.key is None
    assert msg.priority == 0
    assert msg.headers == {}
    assert before <= msg.timestamp <= after
    assert isinstance(msg.timestamp, float)
    assert msg.attempts == 0
    assert msg.reply_to is None
    assert msg.correlation_id is None
    assert msg.content_type == "application/octet-stream"
    assert msg.meta == {}


def test_every_field_can_be_given():
    msg = Message(
        b"x", id="abc", key="order-42", priority=-3, headers={"a": 1, "b": "two", "c": 1.5, "d": True, "e": None},
        timestamp=12.5, attempts=4, reply_to="replies", correlation_id="req-1", content_type="text/plain",
        meta={"k": [1, 2]},
    )
    assert (msg.id, msg.key, msg.priority, msg.timestamp, msg.attempts) == ("abc", "order-42", -3, 12.5, 4)
    assert (msg.reply_to, msg.correlation_id, msg.content_type) == ("replies", "req-1", "text/plain")
    assert msg.headers == {"a": 1, "b": "two", "c": 1.5, "d": True, "e": None}
    assert msg.meta == {"k": [1, 2]}


def test_fields_after_body_are_keyword_only():
    with pytest.raises(TypeError):
        Message(b"x", "an-id")  # type: ignore[misc]


def test_mutable_defaults_are_not_shared():
    a, b = Message(b""), Message(b"")
    a.headers["x"] = 1
    a.meta["y"] = 2
    assert b.headers == {} and b.meta == {}


def test_has_slots_and_no_instance_dict():
    msg = Message(b"")
    assert not hasattr(msg, "__dict__")
    with pytest.raises(AttributeError):
        msg.not_a_field = 1  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", [b"abc", bytearray(b"abc"), memoryview(b"abc"), b""])
def test_bytes_like_bodies_are_kept_as_given(body):
    assert Message(body).body is body


@pytest.mark.parametrize("body", ["text", 12, None, [1, 2], np.zeros(3)])
def test_other_bodies_are_a_type_error_naming_body(body):
    with pytest.raises(TypeError, match="body"):
        Message(body)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ids


def test_default_id_is_a_uuid4_hex():
    for _ in range(2000):
        mid = Message(b"").id
        assert len(mid) == 32 and mid == mid.lower()
        parsed = uuid.UUID(mid)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert parsed.hex == mid


def test_ids_are_unique_across_threads():
    per_thread = 3000
    results: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        for _ in range(per_thread):
            out.append(new_id())

    workers = [threading.Thread(target=make, args=(out,)) for out in results]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30.0)
    assert not any(w.is_alive() for w in workers)
    ids = [i for out in results for i in out]
    assert len(ids) == 4 * per_thread
    assert len(set(ids)) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_does_not_repeat_the_parents_ids():
    new_id()  # the pool now holds ids a careless child would hand out again
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: send three ids and leave at once
        try:
            os.write(write_end, "".join(new_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    child = {data[i : i + 32].decode() for i in range(0, len(data), 32)}
    parent = {new_id() for _ in range(3)}
    assert len(child) == 3
    assert not child & parent


# --------------------------------------------------------------------------- equality, repr, pickle


def test_equality_compares_public_fields_and_body_content():
    a = Message(b"abc", key="k")
    b = Message(memoryview(b"abc"), id=a.id, key="k", timestamp=a.timestamp)
    assert a == b
    b._settle = RecordingHandle()
    assert a == b  # the settle handle is not part of the message
    assert a != Message(b"abd", id=a.id, key="k", timestamp=a.timestamp)
    assert a != Message(b"abc", id=a.id, key="j", timestamp=a.timestamp)
    assert a != "abc"


def test_messages_are_unhashable():
    with pytest.raises(TypeError):
        hash(Message(b""))


def test_repr_names_the_fields_and_summarises_big_bodies():
    small = repr(Message(b"hi", id="m1", key="k", priority=2))
    assert "m1" in small and "b'hi'" in small and "key='k'" in small and "priority=2" in small
    big = repr(Message(bytes(10_000), id="m2"))
    assert "10000 bytes" in big and len(big) < 300
    handled = Message(b"", id="m3")
    handled._settle = RecordingHandle()
    assert "RecordingHandle" not in repr(handled)


def test_pickle_keeps_the_fields_and_drops_the_handle():
    msg = Message(memoryview(b"body"), key="k", priority=3, headers={"h": 1}, attempts=2, meta={"m": 1})
    msg._settle = RecordingHandle()
    back = pickle.loads(pickle.dumps(msg))
    assert back == msg
    assert back.body == b"body" and type(back.body) is bytes
    assert back._settle is None


# --------------------------------------------------------------------------- settlement


@pytest.mark.parametrize("action", ["ack", "nack", "reject"])
def test_settling_without_a_bus_is_a_ringbus_error(action):
    msg = Message(b"", id="lonely")
    with pytest.raises(RingbusError, match="not received from a Bus") as info:
        getattr(msg, action)()
    assert action in str(info.value) and "lonely" in str(info.value)


def test_settlement_delegates_to_the_handle():
    handle = RecordingHandle()
    msg = Message(b"")
    msg._settle = handle
    msg.ack()
    msg.nack()
    msg.nack(requeue=False, delay=1.5)
    msg.nack(delay=2)
    msg.reject()
    assert handle.calls == [
        ("ack", msg),
        ("nack", msg, True, None),
        ("nack", msg, False, 1.5),
        ("nack", msg, True, 2.0),
        ("reject", msg),
    ]
    assert all(call[1] is msg for call in handle.calls)


@pytest.mark.parametrize("delay", [-0.1, math.nan, math.inf])
def test_nack_refuses_a_bad_delay(delay):
    msg = Message(b"")
    msg._settle = RecordingHandle()
    with pytest.raises(ValueError, match="delay"):
        msg.nack(delay=delay)
    assert msg._settle.calls == []


# --------------------------------------------------------------------------- of / value


@pytest.mark.parametrize(
    ("value", "content_type"),
    [
        (b"raw", "application/octet-stream"),
        ("text \u00e9\u4e2d", "text/plain; charset=utf-8"),
        ({"a": [1, 2.5, None, True]}, "application/msgpack"),
        ([1, "two"], "application/msgpack"),
        (7, "application/msgpack"),
        (None, "application/msgpack"),
    ],
)
def test_of_and_value_round_trip(value, content_type):
    msg = Message.of(value, key="k", priority=5)
    assert msg.content_type == content_type
    assert (msg.key, msg.priority) == ("k", 5)
    assert msg.value() == value


def test_of_names_a_serializer():
    msg = Message.of({"a": 1}, "json")
    assert msg.content_type == "application/json"
    assert msg.body == b'{"a":1}'
    assert msg.value() == {"a": 1}


def test_of_numpy_keeps_dtype_and_shape():
    array = np.arange(12, dtype=">i4").reshape(3, 4)
    msg = Message.of(array)
    assert msg.meta == {"dtype": ">i4", "shape": [3, 4]}
    back = msg.value()
    assert back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array)


def test_of_refuses_to_override_the_serializer_fields():
    with pytest.raises(TypeError):
        Message.of(b"x", content_type="text/plain")


def test_value_refuses_pickle_unless_allowed():
    msg = Message.of({1, 2}, "pickle")
    with pytest.raises(ProtocolError, match="allow_pickle=True"):
        msg.value()
    assert msg.value(allow_pickle=True) == {1, 2}
