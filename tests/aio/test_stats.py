"""queue_stats on the asyncio API: exact counts after a known sequence; consumers counted while consuming."""

from __future__ import annotations

import pytest

from ringbus.bus import QueueStats

from .support import one

pytestmark = pytest.mark.asyncio

COUNTS = ("depth", "ready", "delayed", "in_flight", "sent", "acked", "redelivered", "dead_lettered", "expired",
          "deduplicated")


async def counts(bus, q, **expected: int) -> None:
    stats = await bus.queue_stats(q)
    assert isinstance(stats, QueueStats) and stats.name == q
    assert {name: getattr(stats, name) for name in COUNTS} == {name: expected.get(name, 0) for name in COUNTS}


@pytest.mark.adapters
async def test_counts_follow_messages(bus, queue):
    q = await queue()
    a = await bus.send(q, b"a")
    await bus.send_many(q, [b"b", b"c"])
    await counts(bus, q, depth=3, ready=3, sent=3)
    first = await one(bus, q)
    assert first.id == a
    await counts(bus, q, depth=2, ready=2, in_flight=1, sent=3)
    await first.ack()
    await counts(bus, q, depth=2, ready=2, sent=3, acked=1)
    await (await one(bus, q)).reject()
    await counts(bus, q, depth=1, ready=1, sent=3, acked=1, dead_lettered=1)
    await (await one(bus, q)).nack(requeue=True)
    again = await one(bus, q)
    await counts(bus, q, in_flight=1, sent=3, acked=1, dead_lettered=1, redelivered=1)
    await again.ack()
    await counts(bus, q, sent=3, acked=2, dead_lettered=1, redelivered=1)


async def test_a_consume_loop_counts_as_a_consumer_on_the_broker(bus, queue, url):
    q = await queue()
    await bus.send(q, b"x")
    stream = bus.consume(q, timeout=1.0)
    await (await stream.__anext__()).ack()
    consumers = (await bus.queue_stats(q)).consumers
    assert isinstance(consumers, int) and consumers >= 0
    if url.startswith(("tcp://", "ipc://")):
        assert consumers == 1
    await stream.aclose()
    if url.startswith(("tcp://", "ipc://")):
        assert (await bus.queue_stats(q)).consumers == 0
