"""The asyncio broker client through a broker restart (``kill -9``, started again on the same address and data).

An ``async for`` consumer and a producer task keep their buses across the restart. Checked: consumption
resumes on the same iterator without a new connect; the restarted broker counts the consumer again (its bus
says HELLO and re-announces it); every send that was confirmed is consumed; a message held across the restart
and acked afterwards is counted stale at the new run, and does not settle the new run's delivery that has the
same queue-local tag. Also: a call waiting when the connection drops fails at once with PeerGone (not after
the bus's timeout), and an ephemeral subscription is made again at the restarted broker.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import ringbus
from faults._peers import free_tcp_endpoint
from ringbus.aio import AsyncBus, AsyncMessage
from ringbus.aio.broker import AsyncBrokerBus
from ringbus.broker.process import BrokerProcess
from ringbus.broker.server import TAG_BITS

pytestmark = [pytest.mark.asyncio, pytest.mark.integration, pytest.mark.timeout(60)]

QUEUE = "restart.jobs"
SENDS = 80  # messages the producer sends, one every PACE seconds, the broker restarting in between
PACE = 0.01
WAIT = 15.0  # seconds any step may take at most on a loaded machine


def _tag(message: AsyncMessage) -> int:
    return message.message._settle.tag  # type: ignore[no-any-return]  # the broker's delivery tag


def _run_of(tag: int) -> int:
    return tag >> TAG_BITS  # the broker run that delivered it (docs/protocol.md, "Settles")


def _local(tag: int) -> int:
    return tag & ((1 << TAG_BITS) - 1)  # the queue's own count, which starts at 1 again in each run


async def _until(what: str, check: Callable[[], object | Awaitable[object]]) -> None:
    """Wait until ``check()`` (awaited if it returns an awaitable) is true; fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what} did not happen within {WAIT:g} s"
        await asyncio.sleep(0.05)


class _Consumer:
    """One ``async for`` over the queue for the whole test: acks what it gets, except two deliveries it holds -
    the second of the first run, and the delivery of the next run whose queue-local tag is the same."""

    def __init__(self, bus: AsyncBus) -> None:
        self.bus = bus
        self.got: list[str] = []
        self.held_before: AsyncMessage | None = None
        self.held_after: AsyncMessage | None = None

    async def run(self) -> None:
        async for message in self.bus.consume(QUEUE, prefetch=16):
            self.got.append(message.id)
            if self.held_before is None and len(self.got) == 2:
                self.held_before = message
                continue
            before = self.held_before
            if (before is not None and self.held_after is None and _run_of(_tag(message)) != _run_of(_tag(before))
                    and _local(_tag(message)) == _local(_tag(before))):
                self.held_after = message
                continue
            await message.ack()


async def _produce(bus: AsyncBus, confirmed: list[str], retried: list[int]) -> None:
    """Send SENDS messages; one refused with PeerGone (the broker went away) is sent again, same dedup_id."""
    for i in range(SENDS):
        while True:
            try:
                confirmed.append(await bus.send(QUEUE, f"m-{i}".encode(), dedup_id=f"m-{i}"))
                break
            except ringbus.PeerGone:
                retried.append(i)
                await asyncio.sleep(0.05)
        await asyncio.sleep(PACE)


async def test_a_consumer_and_a_producer_ride_a_broker_restart(tmp_path: Path) -> None:
    endpoint = free_tcp_endpoint()
    broker = BrokerProcess(tmp_path / "data", endpoint).start()
    consumer_bus = AsyncBrokerBus(endpoint, timeout=5.0)
    producer_bus = AsyncBrokerBus(endpoint, timeout=5.0)
    consumer = _Consumer(consumer_bus)
    consuming: asyncio.Task[None] | None = None
    try:
        # A minute's lease: nothing comes back by lease expiry, only through the restart.
        await producer_bus.declare_queue(QUEUE, visibility_timeout=60.0)
        consuming = asyncio.create_task(consumer.run())
        confirmed: list[str] = []
        retried: list[int] = []
        producing = asyncio.create_task(_produce(producer_bus, confirmed, retried))

        async def counted() -> bool:
            return (await producer_bus.queue_stats(QUEUE)).consumers == 1

        async def only_held_after_left() -> bool:
            stats = await producer_bus.queue_stats(QUEUE)
            return stats.depth == 0 and stats.in_flight == 1

        await _until("the consumer being counted", counted)
        await _until("a third of the sends", lambda: len(confirmed) >= SENDS // 3 and consumer.held_before)

        broker.kill()  # SIGKILL: a crash, the log as it was
        await asyncio.sleep(0.3)  # calls made meanwhile wait for the reconnect
        broker = BrokerProcess(tmp_path / "data", endpoint).start()

        await asyncio.wait_for(producing, WAIT)
        await _until("every confirmed send consumed", lambda: set(confirmed) <= set(consumer.got))
        await _until("the consumer counted again by the restarted broker", counted)
        assert consumer_bus.reconnects == 1  # the same bus, the same iterator
        assert not consuming.done()
        await _until("a delivery of the new run with the held one's tag", lambda: consumer.held_after)
        await _until("everything else acked", only_held_after_left)

        held_before, held_after = consumer.held_before, consumer.held_after
        assert held_before is not None and held_after is not None
        stale = (await consumer_bus.broker_stats())["counters"]["stale_settles"]
        await held_before.ack()  # its tag is of the previous run
        after = await consumer_bus.broker_stats()  # the same connection: the ack went first
        assert after["counters"]["stale_settles"] == stale + 1
        assert after["queues"][QUEUE]["in_flight"] == 1  # held_after is still in flight
        await held_after.ack()
        settled = await consumer_bus.broker_stats()
        assert settled["counters"]["stale_settles"] == stale + 1  # the new run's delivery was settled once, now
        assert settled["queues"][QUEUE]["in_flight"] == 0
        assert settled["queues"][QUEUE]["depth"] == 0
        print(f"sends {SENDS}, confirmed {len(confirmed)}, retried after PeerGone {len(retried)}, "
              f"consumed {len(consumer.got)} ({len(consumer.got) - len(set(consumer.got))} again after the restart)")
    finally:
        if consuming is not None:
            consuming.cancel()
            await asyncio.gather(consuming, return_exceptions=True)
        await consumer_bus.close()
        await producer_bus.close()
        broker.kill()


async def test_a_call_waiting_when_the_broker_dies_fails_at_once(tmp_path: Path) -> None:
    """The broker is stopped (SIGSTOP) with a call in flight, then killed: the call gets PeerGone saying the
    connection dropped - not the timeout's "did not answer within 30 s" - and the bus works again after a start."""
    endpoint = free_tcp_endpoint()
    broker = BrokerProcess(tmp_path / "data", endpoint).start()
    bus = AsyncBrokerBus(endpoint, timeout=30.0)
    try:
        await bus.declare_queue(QUEUE)
        os.kill(broker.pid, signal.SIGSTOP)  # it takes the request in (the kernel does) and never answers
        waiting = asyncio.create_task(bus.queue_stats(QUEUE))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        broker.kill()
        with pytest.raises(ringbus.PeerGone, match="dropped before it answered"):
            await asyncio.wait_for(waiting, WAIT)
        broker = BrokerProcess(tmp_path / "data", endpoint).start()
        assert (await bus.queue_stats(QUEUE)).depth == 0  # a call made while it was down waits for the reconnect
        assert bus.reconnects == 1
    finally:
        await bus.close()
        broker.kill()


async def test_an_ephemeral_subscription_is_made_again_after_a_restart(tmp_path: Path) -> None:
    """A restarted broker forgot every ephemeral subscription; the subscriber's bus subscribes again by itself."""
    endpoint = free_tcp_endpoint()
    broker = BrokerProcess(tmp_path / "data", endpoint).start()
    subscriber_bus = AsyncBrokerBus(endpoint, timeout=5.0)
    publisher = AsyncBrokerBus(endpoint, timeout=5.0)
    try:
        async with subscriber_bus.subscribe("ticks.*") as subscription:
            await publisher.publish("ticks.before", b"before")
            first = await subscription.receive(timeout=WAIT)
            assert first is not None and first.body == b"before"
            broker.kill()
            broker = BrokerProcess(tmp_path / "data", endpoint).start()
            deadline = time.monotonic() + WAIT
            got = None
            while got is None:  # publications before the subscription is back are missed: ephemeral
                assert time.monotonic() < deadline, "the subscription never came back"
                await publisher.publish("ticks.after", b"after")
                got = await subscription.receive(timeout=0.2)
            assert got.body == b"after"
            assert subscriber_bus.reconnects == 1
    finally:
        await subscriber_bus.close()
        await publisher.close()
        broker.kill()
