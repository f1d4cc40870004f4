"""queue_stats: exact counts after a known sequence of sends and settlements."""

from __future__ import annotations

import dataclasses
import time

from ringbus.bus import QueueStats

from .support import one, unsupported

COUNTS = ("depth", "ready", "delayed", "in_flight", "sent", "acked", "redelivered", "dead_lettered", "expired",
          "deduplicated")


def counts(bus, q, **expected: int) -> None:
    """Asserts the counts named in ``expected``, and that the others of COUNTS are 0."""
    stats = bus.queue_stats(q)
    assert isinstance(stats, QueueStats)
    assert stats.name == q
    actual = {name: getattr(stats, name) for name in COUNTS}
    assert actual == {name: expected.get(name, 0) for name in COUNTS}
    assert stats.depth == stats.ready + stats.delayed


def test_fresh_queue_is_all_zero(bus, queue):
    q = queue()
    counts(bus, q)
    stats = bus.queue_stats(q)
    assert isinstance(stats.consumers, int) and stats.consumers >= 0
    for rate in (stats.send_rate, stats.ack_rate):
        assert isinstance(rate, (int, float)) and rate >= 0
    assert {f.name for f in dataclasses.fields(stats)} >= set(COUNTS)


def test_counts_follow_messages(bus, queue):
    q = queue()
    a, b, c = (bus.send(q, body) for body in (b"a", b"b", b"c"))
    counts(bus, q, depth=3, ready=3, sent=3)
    first = one(bus, q)
    assert first.id == a
    counts(bus, q, depth=2, ready=2, in_flight=1, sent=3)
    first.ack()
    counts(bus, q, depth=2, ready=2, sent=3, acked=1)
    second = one(bus, q)
    assert second.id == b
    second.reject()
    counts(bus, q, depth=1, ready=1, sent=3, acked=1, dead_lettered=1)
    third = one(bus, q)
    third.nack(requeue=True)
    counts(bus, q, depth=1, ready=1, sent=3, acked=1, dead_lettered=1)
    again = one(bus, q)
    assert again.id == c
    counts(bus, q, in_flight=1, sent=3, acked=1, dead_lettered=1, redelivered=1)
    again.ack()
    counts(bus, q, sent=3, acked=2, dead_lettered=1, redelivered=1)
    assert (bus.queue_stats(f"{q}.dlq").depth, bus.queue_stats(f"{q}.dlq").ready) == (1, 1)


def test_consumers_is_a_count(bus, queue):
    q = queue()
    bus.send(q, b"x")
    stream = bus.consume(q, timeout=1.0)
    next(stream).ack()
    consumers = bus.queue_stats(q).consumers
    assert isinstance(consumers, int) and consumers >= 0
    stream.close()


def test_delayed_counts(bus, queue):
    q = queue()
    if unsupported(bus, "delay", lambda: bus.send(q, b"x", delay=60)):
        return
    bus.send(q, b"later", delay=60)
    counts(bus, q, depth=1, delayed=1, sent=1)
    bus.send(q, b"now")
    one(bus, q).nack(delay=60)
    counts(bus, q, depth=2, delayed=2, sent=2)


def test_expired_counts(bus, queue):
    q = queue()
    if unsupported(bus, "ttl", lambda: bus.send(q, b"x", ttl=0.1)):
        return
    bus.send(q, b"stale", ttl=0.1)
    time.sleep(0.3)
    assert bus.receive(q, timeout=0) is None
    counts(bus, q, sent=1, dead_lettered=1, expired=1)


def test_deduplicated_counts(bus, queue):
    q = queue()
    if unsupported(bus, "dedup", lambda: bus.send(q, b"x", dedup_id="d")):
        return
    bus.send(q, b"x", dedup_id="d")
    bus.send(q, b"x", dedup_id="d")
    stats = bus.queue_stats(q)
    assert (stats.depth, stats.deduplicated) == (1, 1)
