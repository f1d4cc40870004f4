"""Settling with await: ack, nack, reject; redelivery; dead letters; settling from another thread."""

from __future__ import annotations

import asyncio

import pytest

import ringbus

from .support import dead, nothing, one, refused

pytestmark = pytest.mark.asyncio

PAYLOAD = b"work"


@pytest.mark.adapters
async def test_nack_requeues_with_attempts_incremented(bus, queue):
    q = await queue()
    message_id = await bus.send(q, PAYLOAD)
    first = await one(bus, q)
    assert first.attempts == 0
    await first.nack(requeue=True)
    again = await one(bus, q)
    assert (again.id, bytes(again.body), again.attempts) == (message_id, PAYLOAD, 1)
    await again.ack()
    await nothing(bus, q)


async def test_nack_with_delay_hides_the_message_until_then(bus, queue):
    q = await queue()
    await bus.send(q, PAYLOAD)
    message = await one(bus, q)
    if await refused(bus, "delay", lambda: message.nack(delay=0.5)):
        return
    await message.nack(delay=0.5)
    await nothing(bus, q, timeout=0)
    again = await one(bus, q)
    assert (again.id, again.attempts) == (message.id, 1)


@pytest.mark.adapters
@pytest.mark.parametrize("settle, reason", [("reject", "rejected"), ("nack", "nacked")])
async def test_reject_and_nack_without_requeue_dead_letter(bus, queue, settle, reason):
    q = await queue()
    message_id = await bus.send(q, PAYLOAD, headers={"mine": 1})
    message = await one(bus, q)
    await (message.reject() if settle == "reject" else message.nack(requeue=False))
    letter = await dead(bus, q, reason)
    assert (letter.id, bytes(letter.body), letter.headers.get("mine")) == (message_id, PAYLOAD, 1)
    await nothing(bus, q)


async def test_settling_twice_raises(bus, queue):
    q = await queue()
    await bus.send(q, PAYLOAD)
    message = await one(bus, q)
    await message.ack()
    with pytest.raises(ringbus.RingbusError):
        await message.ack()


@pytest.mark.adapters
async def test_ack_after_close_raises_and_the_message_comes_back(bus, second_bus, queue):
    q = await queue()
    await bus.send(q, PAYLOAD)
    message = await one(bus, q)
    await nothing(second_bus, q)  # in flight: invisible to others
    await bus.close()
    with pytest.raises(ringbus.RingbusError):
        await message.ack()
    again = await one(second_bus, q)
    assert (again.id, again.attempts) == (message.id, 1)


async def test_unacked_message_comes_back_after_visibility_timeout(bus, queue):
    q = await queue(visibility_timeout=0.2)
    await bus.send(q, PAYLOAD)
    message = await one(bus, q)
    again = await one(bus, q)
    assert (again.id, again.attempts) == (message.id, 1)
    await again.ack()
    await nothing(bus, q, timeout=0.5)


async def test_after_max_attempts_nacks_the_message_is_dead(bus, queue):
    q = await queue(max_attempts=2)
    message_id = await bus.send(q, PAYLOAD)
    for attempt in range(2):
        message = await one(bus, q)
        assert (message.id, message.attempts) == (message_id, attempt)
        await message.nack(requeue=True)
    await nothing(bus, q)
    assert (await dead(bus, q, "max_attempts")).id == message_id


async def test_custom_dead_letter_queue_is_used(bus, queue):
    letters = await queue()
    q = await queue(dead_letter=letters)
    message_id = await bus.send(q, PAYLOAD)
    await (await one(bus, q)).reject()
    assert (await dead(bus, q, "rejected", dead_letter=letters)).id == message_id


@pytest.mark.adapters
async def test_the_plain_message_settles_from_another_thread(bus, queue):
    q = await queue()
    await bus.send_many(q, [b"a", b"b"])
    consumed = bus.consume(q, prefetch=1, timeout=5.0)
    first = await consumed.__anext__()
    await asyncio.to_thread(first.message.ack)  # a sync ack, off the loop: it gives the consumer its credit back
    second = await consumed.__anext__()
    assert bytes(second.body) == b"b"
    await second.ack()
    await consumed.aclose()
    stats = await bus.queue_stats(q)
    assert (stats.depth, stats.in_flight, stats.acked) == (0, 0, 2)
