"""Queues: declare, send, receive, ack; what a message keeps on the way; names, options and errors."""

from __future__ import annotations

import pytest

import ringbus
from ringbus.message import Message

from .support import bodies, nothing, one, take, unsupported

PAYLOAD = b"payload \x00\xff"
FEATURE_OF = {"delay": "delay", "ttl": "ttl", "priority": "priority"}


def test_round_trip(bus, queue):
    q = queue()
    bus.send(q, b"hello")
    message = one(bus, q)
    assert bytes(message.body) == b"hello"
    assert message.attempts == 0
    message.ack()
    nothing(bus, q)


@pytest.mark.parametrize("body", [
    PAYLOAD, bytearray(PAYLOAD), memoryview(PAYLOAD), b"", bytes(range(256)) * 4096,
], ids=["bytes", "bytearray", "memoryview", "empty", "1MiB"])
def test_bytes_like_bodies_come_back_equal(bus, queue, body):
    q = queue()
    bus.send(q, body)
    message = one(bus, q)
    assert isinstance(message.body, (bytes, bytearray, memoryview))
    assert bytes(message.body) == bytes(body)


def test_message_on_another_connection(bus, second_bus, queue):
    q = queue()
    message_id = bus.send(q, PAYLOAD)
    message = one(second_bus, q)
    assert (message.id, bytes(message.body)) == (message_id, PAYLOAD)
    message.ack()
    nothing(bus, q)


def test_message_fields_survive(bus, queue):
    q = queue()
    headers = {"s": "text", "i": -7, "f": 1.5, "t": True, "n": None}
    sent = Message(PAYLOAD, key="k-1", priority=3, headers=headers, correlation_id="corr-1", reply_to="replies",
                   content_type="application/json", meta={"schema": 2})
    bus.send(q, sent)
    got = one(bus, q)
    assert got.id == sent.id
    assert bytes(got.body) == PAYLOAD
    assert (got.key, got.priority, got.correlation_id, got.reply_to) == ("k-1", 3, "corr-1", "replies")
    assert {name: got.headers.get(name, "<missing>") for name in headers} == headers
    assert (got.content_type, got.meta) == ("application/json", {"schema": 2})
    assert got.timestamp == pytest.approx(sent.timestamp, abs=1e-3)


def test_keywords_override_message_fields(bus, queue):
    q = queue()
    bus.send(q, Message(PAYLOAD, key="from-message", priority=1), key="from-keyword", priority=2)
    got = one(bus, q)
    assert (got.key, got.priority) == ("from-keyword", 2)


def test_send_returns_the_id_received(bus, queue):
    q = queue()
    message_id = bus.send(q, PAYLOAD)
    assert isinstance(message_id, str) and message_id
    assert one(bus, q).id == message_id


def test_send_of_a_message_keeps_its_id(bus, queue):
    q = queue()
    sent = Message(PAYLOAD)
    assert bus.send(q, sent) == sent.id
    assert one(bus, q).id == sent.id


def test_send_many_returns_ids_in_order_and_keeps_order(bus, queue):
    q = queue()
    own = Message(b"m1")
    ids = bus.send_many(q, [b"m0", own, bytearray(b"m2"), memoryview(b"m3")])
    assert len(ids) == 4 and ids[1] == own.id and len(set(ids)) == 4
    got = take(bus, q, n=4)
    assert [m.id for m in got] == ids
    assert bodies(got) == [b"m0", b"m1", b"m2", b"m3"]


def test_fifo_order_of_1000_messages(bus, queue):
    q = queue()
    sent = [f"{i:04d}".encode() for i in range(1000)]
    for body in sent:
        bus.send(q, body)
    received = []
    for _ in sent:
        message = one(bus, q)
        received.append(bytes(message.body))
        message.ack()
    assert received == sent
    nothing(bus, q)


@pytest.mark.parametrize("timeout", [0, 0.05])
def test_receive_on_empty_queue_returns_none(bus, queue, timeout):
    q = queue()
    assert bus.receive(q, timeout=timeout) is None


def test_declare_is_idempotent_with_the_same_options(bus, second_bus, queue):
    q = queue(max_attempts=3, visibility_timeout=10.0)
    bus.declare_queue(q, max_attempts=3, visibility_timeout=10.0)
    second_bus.declare_queue(q, max_attempts=3, visibility_timeout=10.0)
    plain = queue()
    bus.declare_queue(plain, max_attempts=5, visibility_timeout=30.0)  # the defaults, spelt out


@pytest.mark.parametrize("option, value", [
    ("max_attempts", 3), ("visibility_timeout", 7.0), ("durable", False), ("dedup_window", 10.0),
])
def test_declare_with_other_options_names_them(bus, queue, option, value):
    q = queue()
    with pytest.raises(ValueError, match=option):
        bus.declare_queue(q, **{option: value})


@pytest.mark.parametrize("options", [
    {"max_attempts": 0}, {"visibility_timeout": -1}, {"visibility_timeout": 0}, {"overflow": "x"},
    {"max_length": 0}, {"ttl": 0}, {"dedup_window": -1}, {"dead_letter": "a b"},
], ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()))
def test_declare_with_invalid_options_raises_value_error(bus, names, options):
    q = names.queue()
    with pytest.raises(ValueError):
        bus.declare_queue(q, **options)
    assert q not in bus.queues()
    assert f"{q}.dlq" not in bus.queues()


@pytest.mark.parametrize("name", ["a b", "", ".starts-with-dot", "x" * 201, "slash/y"])
def test_declare_with_invalid_name_raises_value_error(bus, name):
    with pytest.raises(ValueError):
        bus.declare_queue(name)


def test_undeclared_queue_is_not_found(bus, names):
    q = names.queue()
    if unsupported(bus, "queues", lambda: bus.send(q, PAYLOAD)):
        return  # a backend without queues (mqtt://) refuses them all, as it must
    with pytest.raises(ringbus.NotFound):
        bus.send(q, PAYLOAD)
    with pytest.raises(ringbus.NotFound):
        bus.receive(q, timeout=0)
    with pytest.raises(ringbus.NotFound):
        bus.queue_stats(q)


@pytest.mark.parametrize("body", ["text", 42, {"a": 1}, None], ids=["str", "int", "dict", "None"])
def test_body_of_wrong_type_raises_type_error(bus, queue, body):
    q = queue()
    with pytest.raises(TypeError):
        bus.send(q, body)
    nothing(bus, q, timeout=0)


@pytest.mark.parametrize("options", [
    {"delay": -1.0}, {"ttl": 0}, {"ttl": -1.0}, {"priority": "high"}, {"key": 5}, {"headers": {"h": [1, 2]}},
], ids=["delay=-1", "ttl=0", "ttl=-1", "priority=str", "key=int", "header=list"])
def test_send_with_invalid_options_raises(bus, queue, options):
    q = queue()
    (option,) = options
    # A backend without the feature may refuse it as Unsupported before looking at the value.
    refused = (ringbus.Unsupported,) if unsupported(bus, FEATURE_OF.get(option, "queues")) else ()
    with pytest.raises((TypeError, ValueError, *refused)):
        bus.send(q, PAYLOAD, **options)
    nothing(bus, q, timeout=0)


def test_queues_lists_declared_queues(bus, second_bus, queue):
    first, second = queue(), queue()
    for listed in (bus.queues(), second_bus.queues()):
        assert isinstance(listed, list)
        assert {first, second, f"{first}.dlq", f"{second}.dlq"} <= set(listed)
