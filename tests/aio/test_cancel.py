"""Cancellation loses no message: a cancelled receive or consume iteration leaves what it took to come back at once.

Every queue here has a visibility timeout of a minute, so a message that comes back within the test's wait was
given back (released, or requeued by the adapter), not redelivered after its lease ran out. These tests run on
asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio

import pytest

from .support import WAIT, bodies, nothing, one, take

pytestmark = [pytest.mark.asyncio, pytest.mark.adapters]

LEASE = 60.0
RACES = 25


def native(url: str) -> bool:
    return url.startswith(("memory://", "tcp://", "ipc://"))


async def test_cancelled_receive_that_was_waiting_takes_nothing(bus, second_bus, queue, url):
    q = await queue(visibility_timeout=LEASE)
    waiting = asyncio.ensure_future(bus.receive(q, timeout=None))
    await asyncio.sleep(0.1)  # it is waiting (at the broker, in a slice, or between polls)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    message_id = await bus.send(q, b"after")
    message = await one(second_bus, q)
    assert message.id == message_id
    assert message.attempts == 0 if native(url) else message.attempts <= 1  # the adapter's give-back is a nack
    await message.ack()


async def test_receives_cancelled_at_any_moment_lose_nothing(bus, second_bus, queue, rng, url):
    q = await queue(visibility_timeout=LEASE)
    sent, got = [], []
    for i in range(RACES):
        task = asyncio.ensure_future(bus.receive(q, timeout=WAIT))
        await asyncio.sleep(0)
        sent.append(await second_bus.send(q, b"%d" % i))
        for _ in range(rng.randrange(6)):  # cancel before, while or after the delivery reaches this bus
            await asyncio.sleep(0)
        if rng.random() < 0.3:
            await asyncio.sleep(rng.random() * 0.003)
        task.cancel()
        try:
            message = await task
        except asyncio.CancelledError:
            continue
        assert message is not None
        got.append(message.id)
        await message.ack()
    back = await take(second_bus, q, n=len(sent) - len(got))  # everything not taken came back at once
    assert sorted(got + [m.id for m in back]) == sorted(sent)
    for message in back:
        await message.ack()
    await nothing(bus, q)  # a round trip on ``bus``: its acks are in
    if native(url):  # (RabbitMQ's and Redis's own counts are checked by tests/contract, in step)
        stats = await second_bus.queue_stats(q)  # behind second_bus's acks on its own connection
        assert (stats.depth, stats.in_flight) == (0, 0)


async def test_cancelled_consume_loop_gives_back_what_it_fetched(bus, second_bus, queue, url):
    q = await queue(visibility_timeout=LEASE)
    await bus.send_many(q, [b"%d" % i for i in range(10)])
    handed: list = []
    first_in = asyncio.Event()

    async def consumer() -> None:
        async for message in bus.consume(q, prefetch=10):
            handed.append(message)
            first_in.set()
            await asyncio.Event().wait()  # the handler is busy when the task is cancelled

    task = asyncio.ensure_future(consumer())
    await asyncio.wait_for(first_in.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rest = await take(second_bus, q, n=9)
    assert bodies(rest) == [b"%d" % i for i in range(1, 10)]
    if native(url):
        assert {m.attempts for m in rest} == {0}
    await handed[0].ack()  # the one handed out stayed with the application, still ackable
    await bus.queue_stats(q)  # a round trip on ``bus``: its ack is in (each connection is in order, not both)
    for message in rest:
        await message.ack()
    stats = await second_bus.queue_stats(q)
    assert (stats.depth, stats.in_flight, stats.acked) == (0, 0, 10)


async def test_consume_iteration_cancelled_while_waiting_takes_nothing(bus, second_bus, queue):
    q = await queue(visibility_timeout=LEASE)
    stream = bus.consume(q, prefetch=4)
    waiting = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.1)  # the iterator waits for a first message
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    ids = await bus.send_many(q, [b"a", b"b", b"c"])
    back = await take(second_bus, q, n=3)
    assert sorted(m.id for m in back) == sorted(ids)
    with pytest.raises(StopAsyncIteration):  # a cancelled iteration ends the iterator
        await stream.__anext__()


async def test_wait_for_timeout_around_receive_loses_nothing(bus, second_bus, queue):
    q = await queue(visibility_timeout=LEASE)
    for i in range(10):
        message_id = await second_bus.send(q, b"%d" % i)
        try:
            message = await asyncio.wait_for(bus.receive(q), timeout=0.0005 * i)
        except asyncio.TimeoutError:
            message = await one(second_bus, q)
        assert message is not None and message.id == message_id
        await message.ack()
    await nothing(second_bus, q)
