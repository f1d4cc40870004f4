"""consume() on the asyncio API: prefetch bounds what is unsettled, the idle timeout ends it, tasks compete."""

from __future__ import annotations

import asyncio
import collections

import pytest

from .support import WAIT, bodies, one

pytestmark = pytest.mark.asyncio


async def collect(stream, ack: bool = False) -> list:
    got = []
    async for message in stream:
        got.append(message)
        if ack:
            await message.ack()
    return got


@pytest.mark.adapters
async def test_prefetch_bounds_unsettled_messages(bus, queue):
    q = await queue()
    await bus.send_many(q, [b"%d" % i for i in range(5)])
    got = await collect(bus.consume(q, prefetch=2, timeout=0.3))
    assert bodies(got) == [b"0", b"1"]


async def test_ack_lets_the_next_message_through(bus, queue):
    q = await queue()
    await bus.send_many(q, [b"%d" % i for i in range(5)])
    stream = bus.consume(q, prefetch=2, timeout=1.0)
    first, second = await stream.__anext__(), await stream.__anext__()
    await first.ack()
    third = await stream.__anext__()
    assert bodies([first, second, third]) == [b"0", b"1", b"2"]
    with pytest.raises(StopAsyncIteration):  # `second` and `third` unsettled: nothing more within the timeout
        await stream.__anext__()


@pytest.mark.adapters
async def test_consume_with_acks_gets_everything_then_ends_when_idle(bus, queue):
    q = await queue()
    await bus.send_many(q, [b"%d" % i for i in range(20)])
    got = await collect(bus.consume(q, prefetch=4, timeout=0.3), ack=True)
    assert bodies(got) == [b"%d" % i for i in range(20)]
    assert await collect(bus.consume(q, timeout=0.2)) == []
    stats = await bus.queue_stats(q)
    assert (stats.depth, stats.in_flight, stats.acked) == (0, 0, 20)


async def test_consume_waits_for_messages_sent_while_it_runs(bus, second_bus, queue):
    q = await queue()
    got: list = []

    async def consumer() -> None:
        async for message in bus.consume(q, prefetch=8, timeout=WAIT):
            got.append(bytes(message.body))
            await message.ack()
            if len(got) == 30:
                return

    task = asyncio.ensure_future(consumer())
    for i in range(30):
        await second_bus.send(q, b"%d" % i)
        if i % 10 == 0:
            await asyncio.sleep(0.01)  # the consumer runs dry and waits in between
    await asyncio.wait_for(task, WAIT)
    assert got == [b"%d" % i for i in range(30)]


@pytest.mark.adapters
async def test_competing_consume_tasks_on_one_bus_share_every_message_once(bus, queue):
    q = await queue()
    seen: collections.Counter[str] = collections.Counter()
    done = asyncio.Event()
    total = 120

    async def consumer() -> None:
        async for message in bus.consume(q, prefetch=8, timeout=WAIT):
            seen[message.id] += 1
            await message.ack()
            if sum(seen.values()) >= total:
                done.set()
            if done.is_set():
                return

    tasks = [asyncio.ensure_future(consumer()) for _ in range(3)]
    sent = await bus.send_many(q, [b"%d" % i for i in range(total)])
    await asyncio.wait_for(done.wait(), 2 * WAIT)
    for task in tasks:  # the others wait for more: cancelling them ends their loops
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert set(seen) == set(sent)
    assert max(seen.values()) == 1


@pytest.mark.adapters
async def test_leaving_a_consume_loop_gives_back_what_it_had_not_handed_out(bus, second_bus, queue):
    q = await queue(visibility_timeout=60.0)  # a lease that ran out would take a minute: what comes back was released
    await bus.send_many(q, [b"%d" % i for i in range(6)])
    async for message in bus.consume(q, prefetch=6, timeout=WAIT):
        await message.ack()
        break  # the iterator is finalized (aclose) once dropped: what it fetched ahead goes back
    await asyncio.sleep(0)
    rest = [await one(second_bus, q) for _ in range(5)]
    assert bodies(rest) == [b"%d" % i for i in range(1, 6)]
    assert [m.attempts for m in rest] == [0] * 5  # given back, not redelivered
