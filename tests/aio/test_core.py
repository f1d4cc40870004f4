"""AsyncRing and AsyncPriorityQueue: awaitable waits on the core queues that never block the loop, cancellation
safe; on the native core and its pure-Python twin, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import threading

import pytest

import ringbus
from ringbus.aio import AsyncPriorityQueue, AsyncRing

pytestmark = pytest.mark.asyncio

WAIT = 10.0


async def test_get_waits_for_a_put_from_another_task(impl):
    ring = AsyncRing(impl.Ring(4))
    getter = asyncio.ensure_future(ring.get(timeout=WAIT))
    await asyncio.sleep(0.01)
    assert not getter.done()
    await ring.put("x")
    assert await asyncio.wait_for(getter, WAIT) == "x"


async def test_the_loop_runs_while_a_get_waits(impl):
    ring = AsyncRing(impl.Ring(4))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.ensure_future(ticker())
    with pytest.raises(ringbus.Empty):
        await ring.get(timeout=0.1)
    task.cancel()
    assert ticks > 5  # other tasks ran all along (a blocking get would have frozen the ticker at 1)


async def test_timeouts_raise_empty_and_full(impl):
    ring = AsyncRing(impl.Ring(1))
    with pytest.raises(ringbus.Empty):
        await ring.get(timeout=0)
    with pytest.raises(ringbus.Empty):
        await ring.get(timeout=0.02)
    await ring.put(1, timeout=0)
    with pytest.raises(ringbus.Full):
        await ring.put(2, timeout=0.02)
    with pytest.raises(ValueError):
        await ring.get(timeout=-1)


async def test_put_waits_for_room(impl):
    ring = AsyncRing(impl.Ring(1))
    ring.put_nowait("first")
    putter = asyncio.ensure_future(ring.put("second", timeout=WAIT))
    await asyncio.sleep(0.01)
    assert not putter.done()
    assert await ring.get() == "first"
    await asyncio.wait_for(putter, WAIT)
    assert ring.get_nowait() == "second"


async def test_a_thread_using_the_raw_ring_wakes_an_async_getter(impl):
    raw = impl.Ring(8)
    ring = AsyncRing(raw)
    getter = asyncio.ensure_future(ring.get(timeout=WAIT))
    await asyncio.sleep(0.02)
    thread = threading.Thread(target=raw.put, args=("from a thread",))
    thread.start()
    assert await asyncio.wait_for(getter, WAIT) == "from a thread"
    thread.join()


async def test_cancelled_gets_take_nothing(impl, rng):
    ring = AsyncRing(impl.Ring(64))
    taken = []
    for i in range(200):
        task = asyncio.ensure_future(ring.get(timeout=WAIT))
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        ring.put_nowait(i)
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        task.cancel()
        try:
            taken.append(await task)
        except asyncio.CancelledError:
            pass
    left = ring.get_many(1000)
    assert sorted(taken + left) == list(range(200))  # every item either reached a task or is still here


async def test_close_drains_then_raises_closed_and_wakes_waiters(impl):
    ring = AsyncRing(impl.Ring(4))
    waiter = asyncio.ensure_future(ring.get(timeout=WAIT))
    await asyncio.sleep(0.01)
    ring.close()
    with pytest.raises(ringbus.Closed):
        await asyncio.wait_for(waiter, WAIT)
    with pytest.raises(ringbus.Closed):
        await ring.put(1)
    drained = AsyncRing(impl.Ring(4))
    drained.put_many([1, 2])
    drained.close()
    assert [await drained.get(), await drained.get()] == [1, 2]
    with pytest.raises(ringbus.Closed):
        await drained.get(timeout=0)


async def test_priority_queue_gives_the_most_urgent_first_and_waits(impl):
    queue = AsyncPriorityQueue(impl.PriorityQueue(3))
    await queue.put("low", priority=0)
    await queue.put("high", priority=9)
    queue.put_nowait("mid", priority=5)
    assert len(queue) == 3 and queue.full()
    putter = asyncio.ensure_future(queue.put("late", priority=7, timeout=WAIT))
    await asyncio.sleep(0.01)
    assert not putter.done()
    assert await queue.get() == "high"
    await asyncio.wait_for(putter, WAIT)
    assert [await queue.get(), await queue.get(), await queue.get()] == ["late", "mid", "low"]
    assert queue.empty() and queue.statistics() is not None


async def test_adapters_make_their_queue_or_refuse_other_objects():
    assert AsyncRing(8).capacity == 8
    assert AsyncPriorityQueue().capacity is None
    assert AsyncPriorityQueue(5).capacity == 5
    with pytest.raises(TypeError):
        AsyncRing("8")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AsyncPriorityQueue([])  # type: ignore[arg-type]


async def test_many_producers_and_consumers_hand_over_everything(impl):
    ring = AsyncRing(impl.Ring(16))
    got: list[int] = []

    async def produce(base: int) -> None:
        for i in range(100):
            await ring.put(base + i, timeout=WAIT)

    async def consume() -> None:
        while len(got) < 400:
            try:
                got.append(await ring.get(timeout=0.2))
            except ringbus.Empty:
                continue

    await asyncio.wait_for(asyncio.gather(*(produce(p * 1000) for p in range(4)), consume(), consume()), WAIT)
    assert sorted(got) == sorted(p * 1000 + i for p in range(4) for i in range(100))
