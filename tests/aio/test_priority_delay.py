"""Priorities, delayed sends, expiry and ordered keys on the asyncio API."""

from __future__ import annotations

import asyncio

import pytest

from ringbus.message import Message

from .support import bodies, dead, nothing, one, refused, take

pytestmark = pytest.mark.asyncio


async def test_higher_priority_first_fifo_within_equal(bus, queue):
    q = await queue()
    if await refused(bus, "priority", lambda: bus.send(q, b"x", priority=1)):
        return
    for body, priority in [(b"a0", 0), (b"b5", 5), (b"c1", 1), (b"d5", 5), (b"e0", 0), (b"f9", 9)]:
        await bus.send(q, body, priority=priority)
    await bus.send(q, Message(b"g2", priority=2))
    got = await take(bus, q, n=7)
    assert bodies(got) == [b"f9", b"b5", b"d5", b"g2", b"c1", b"a0", b"e0"]


async def test_delayed_message_is_not_receivable_before_its_delay(bus, queue):
    q = await queue()
    if await refused(bus, "delay", lambda: bus.send(q, b"later", delay=0.5)):
        return
    message_id = await bus.send(q, b"later", delay=0.5)
    await bus.send(q, b"now")
    assert bytes((await one(bus, q)).body) == b"now"
    await nothing(bus, q, timeout=0)
    message = await one(bus, q)
    assert (message.id, bytes(message.body), message.attempts) == (message_id, b"later", 0)


async def test_message_ttl_expires_to_dead_letters(bus, queue):
    q = await queue()
    if await refused(bus, "ttl", lambda: bus.send(q, b"stale", ttl=0.1)):
        return
    message_id = await bus.send(q, b"stale", ttl=0.1)
    await asyncio.sleep(0.3)
    await nothing(bus, q)
    letter = await dead(bus, q, "expired")
    assert (letter.id, bytes(letter.body)) == (message_id, b"stale")


async def test_ordered_keys_flow_through_consume_one_unsettled_per_key(bus, queue):
    q = await queue(needs="ordered_by_key", ordered_by_key=True)
    if q is None:
        return
    sent = [Message(b"%s%d" % (key, i), key=key.decode()) for i in range(10) for key in (b"a", b"b")]
    await bus.send_many(q, sent)
    stream = bus.consume(q, prefetch=8, timeout=2.0)
    first, second = await stream.__anext__(), await stream.__anext__()
    assert {first.key, second.key} == {"a", "b"}  # one per key while neither is settled
    got = [first, second]
    await first.ack()
    await second.ack()
    async for message in stream:  # each ack lets the key's next message through (the read-ahead waits for it)
        got.append(message)
        await message.ack()
        if len(got) == 20:
            break
    for key in ("a", "b"):
        assert [bytes(m.body) for m in got if m.key == key] == [b"%s%d" % (key.encode(), i) for i in range(10)]
