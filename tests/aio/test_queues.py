"""Queues on the asyncio API: send, receive, ack; what a message keeps; names, options and errors."""

from __future__ import annotations

import asyncio

import pytest

import ringbus
from ringbus.aio import AsyncMessage
from ringbus.message import Message

from .support import bodies, needs_queues, nothing, one, refused, take

pytestmark = pytest.mark.asyncio

PAYLOAD = b"payload \x00\xff"


@pytest.mark.adapters
async def test_round_trip(bus, queue):
    q = await queue()
    message_id = await bus.send(q, b"hello")
    message = await one(bus, q)
    assert isinstance(message, AsyncMessage)
    assert (message.id, bytes(message.body), message.attempts) == (message_id, b"hello", 0)
    await message.ack()
    await nothing(bus, q)


@pytest.mark.parametrize("body", [PAYLOAD, memoryview(PAYLOAD), b"", bytes(range(256)) * 4096],
                         ids=["bytes", "memoryview", "empty", "1MiB"])
async def test_bytes_like_bodies_come_back_equal(bus, queue, body):
    q = await queue()
    await bus.send(q, body)
    assert bytes((await one(bus, q)).body) == bytes(body)


@pytest.mark.adapters
async def test_message_fields_survive_and_a_received_message_can_be_sent_on(bus, second_bus, queue):
    q, onward = await queue(), await queue()
    headers = {"s": "text", "i": -7, "f": 1.5, "t": True, "n": None}
    sent = Message(PAYLOAD, key="k-1", priority=3, headers=headers, correlation_id="corr-1", reply_to="replies",
                   content_type="application/json", meta={"schema": 2})
    await bus.send(q, sent)
    got = await one(second_bus, q)
    assert (got.id, bytes(got.body), got.key, got.priority) == (sent.id, PAYLOAD, "k-1", 3)
    assert (got.correlation_id, got.reply_to, got.content_type, got.meta) == ("corr-1", "replies",
                                                                              "application/json", {"schema": 2})
    assert {name: got.headers.get(name, "<missing>") for name in headers} == headers
    assert got.timestamp == pytest.approx(sent.timestamp, abs=1e-3)
    assert got.message == sent and got == sent
    await second_bus.send(onward, got, priority=1)  # an AsyncMessage is a body too
    forwarded = await one(bus, onward)
    assert (forwarded.id, forwarded.priority) == (sent.id, 1)
    await got.ack()


async def test_keywords_override_message_fields(bus, queue):
    q = await queue()
    await bus.send(q, Message(PAYLOAD, key="from-message", priority=1), key="from-keyword", priority=2)
    got = await one(bus, q)
    assert (got.key, got.priority) == ("from-keyword", 2)


async def test_send_many_returns_ids_in_order_and_keeps_order(bus, queue):
    q = await queue()
    own = Message(b"m1")
    ids = await bus.send_many(q, [b"m0", own, bytearray(b"m2"), memoryview(b"m3")])
    assert len(ids) == 4 and ids[1] == own.id and len(set(ids)) == 4
    got = await take(bus, q, n=4)
    assert [m.id for m in got] == ids
    assert bodies(got) == [b"m0", b"m1", b"m2", b"m3"]


async def test_send_many_of_more_than_a_chunk(bus, queue):
    q = await queue()
    sent = [b"%04d" % i for i in range(600)]
    ids = await bus.send_many(q, sent)
    assert len(set(ids)) == 600
    got = await take(bus, q, n=600)
    assert bodies(got) == sent


@pytest.mark.adapters
async def test_concurrent_sends_on_one_bus_are_all_confirmed_and_delivered(bus, queue):
    q = await queue()

    async def producer(p: int) -> list[str]:
        return [await bus.send(q, b"%d-%d" % (p, i)) for i in range(10)]

    ids = [i for batch in await asyncio.gather(*(producer(p) for p in range(20))) for i in batch]
    assert len(set(ids)) == 200
    got = await take(bus, q, n=200)
    assert {m.id for m in got} == set(ids)
    for p in range(20):  # each producer's messages keep its order
        mine = [bytes(m.body) for m in got if m.body.startswith(b"%d-" % p)]
        assert mine == [b"%d-%d" % (p, i) for i in range(10)]
    await nothing(bus, q)


@pytest.mark.parametrize("timeout", [0, 0.05])
async def test_receive_on_empty_queue_returns_none(bus, queue, timeout):
    q = await queue()
    assert await bus.receive(q, timeout=timeout) is None


async def test_declare_is_idempotent_and_other_options_are_named(bus, second_bus, queue):
    q = await queue(max_attempts=3, visibility_timeout=10.0)
    await bus.declare_queue(q, max_attempts=3, visibility_timeout=10.0)
    await second_bus.declare_queue(q, max_attempts=3, visibility_timeout=10.0)
    with pytest.raises(ValueError, match="max_attempts"):
        await bus.declare_queue(q, max_attempts=4, visibility_timeout=10.0)


@pytest.mark.parametrize("options", [
    {"max_attempts": 0}, {"visibility_timeout": 0}, {"overflow": "x"}, {"max_length": 0}, {"dead_letter": "a b"},
], ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()))
async def test_declare_with_invalid_options_raises_value_error(bus, names, options):
    needs_queues(bus)
    q = names.queue()
    with pytest.raises(ValueError):
        await bus.declare_queue(q, **options)
    assert q not in await bus.queues()


@pytest.mark.parametrize("name", ["a b", "", "x" * 201])
async def test_declare_with_invalid_name_raises_value_error(bus, name):
    needs_queues(bus)
    with pytest.raises(ValueError):
        await bus.declare_queue(name)


@pytest.mark.adapters
async def test_undeclared_queue_is_not_found(bus, names):
    needs_queues(bus)
    q = names.queue()
    with pytest.raises(ringbus.NotFound):
        await bus.send(q, PAYLOAD)
    with pytest.raises(ringbus.NotFound):
        await bus.receive(q, timeout=0)
    with pytest.raises(ringbus.NotFound):
        await bus.queue_stats(q)
    with pytest.raises(ringbus.NotFound):
        async for _ in bus.consume(q, timeout=0):
            pass


@pytest.mark.parametrize("body", ["text", 42, None], ids=["str", "int", "None"])
async def test_body_of_wrong_type_raises_type_error(bus, queue, body):
    q = await queue()
    with pytest.raises(TypeError):
        await bus.send(q, body)
    await nothing(bus, q, timeout=0)


@pytest.mark.parametrize("options", [{"delay": -1.0}, {"ttl": 0}, {"priority": "high"}, {"key": 5},
                                     {"headers": {"h": [1, 2]}}],
                         ids=["delay=-1", "ttl=0", "priority=str", "key=int", "header=list"])
async def test_send_with_invalid_options_raises(bus, queue, options):
    q = await queue()
    (option,) = options
    feature = {"delay": "delay", "ttl": "ttl", "priority": "priority"}.get(option, "queues")
    extra = (ringbus.Unsupported,) if await refused(bus, feature) else ()
    with pytest.raises((TypeError, ValueError, *extra)):
        await bus.send(q, PAYLOAD, **options)
    await nothing(bus, q, timeout=0)


@pytest.mark.parametrize("arguments", [{"prefetch": 0}, {"prefetch": True}, {"timeout": -1}])
async def test_consume_with_invalid_arguments_raises_at_once(bus, queue, arguments):
    q = await queue()
    with pytest.raises(ValueError if arguments != {"timeout": -1} else (ValueError, TypeError)):
        bus.consume(q, **arguments)


async def test_queues_lists_declared_queues(bus, second_bus, queue):
    first, second = await queue(), await queue()
    for listed in (await bus.queues(), await second_bus.queues()):
        assert isinstance(listed, list)
        assert {first, second, f"{first}.dlq", f"{second}.dlq"} <= set(listed)
