"""Per-pattern latency: PatternStats.latency_ms (queue wait, processing, end to end) recorded by the Dispatcher,
in the shape of QueueStats.latency_ms. Lower bounds only (a handler that sleeps 20 ms took at least 20 ms):
never an upper bound on time."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

import ringbus
from ringbus._latency import STAGES, SUMMARY_KEYS, WINDOW
from ringbus.message import Message
from ringbus.patterns import RetryPolicy, StatsCounter
from ringbus.patterns._handling import Dispatcher
from ringbus.patterns._stats import LATENCY_ENV, PatternLatency
from ringbus.patterns.competing_consumers import WorkerPool, _SharedCount
from ringbus.patterns.idempotency import MemoryDedupStore
from ringbus.patterns.messaging import Consumer, Producer

from .bus_fixtures import wait_until

pytestmark = pytest.mark.timeout(60)

SLEEP = 0.020  # seconds each sleeping handler takes at least
Latency = Mapping[str, Mapping[str, float]]


@pytest.fixture(params=["memory", "broker"])
def lat_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://latency-{uuid.uuid4().hex}"
    return str(request.getfixturevalue("thread_broker"))


def sleepy(message: Message) -> None:
    time.sleep(SLEEP)


def check_shape(latency: Latency | None) -> Latency:
    """The keys of QueueStats.latency_ms, and percentiles in order."""
    assert latency is not None
    assert tuple(latency) == STAGES
    for stage, summary in latency.items():
        assert tuple(summary) == SUMMARY_KEYS, stage
        assert 0.0 <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"], (stage, summary)
    return latency


def counts(latency: Latency) -> tuple[float, ...]:
    return tuple(latency[stage]["count"] for stage in STAGES)


def test_consumer_reports_the_three_stages_like_queue_stats(lat_url: str, queue: str) -> None:
    n = 8
    with Producer(lat_url, queue) as producer:
        producer.send_many([f"task {i}".encode() for i in range(n)])
    with Consumer(lat_url, queue, prefetch=1) as consumer:
        consumer.run(sleepy, max_messages=n)
        stats = consumer.stats()
        of_queue = consumer.bus.queue_stats(queue).latency_ms
    latency = check_shape(stats.latency_ms)
    assert of_queue is not None and {k: tuple(v) for k, v in of_queue.items()} == \
        {k: tuple(v) for k, v in latency.items()}  # the same shape as the queue's own
    print("Consumer latency_ms:", latency)
    assert stats.processed == n and counts(latency) == (n, n, n)
    ms = SLEEP * 1000
    assert latency["processing"]["p50"] >= ms  # every handler slept SLEEP
    # per message end_to_end >= its processing and its queue wait, so the percentiles are too
    for key in SUMMARY_KEYS[1:]:
        assert latency["end_to_end"][key] >= latency["processing"][key]
        assert latency["end_to_end"][key] >= latency["queue_wait"][key]
    # all were sent first: the last one waited, from its send, for the n - 1 handlers before it
    assert latency["queue_wait"]["max"] >= (n - 1) * ms


def test_retries_count_in_processing_not_twice_in_queue_wait(queue: str) -> None:
    url = f"memory://latency-{uuid.uuid4().hex}"

    def flaky(message: Message) -> None:
        if message.attempts == 0:
            raise ConnectionError("first try fails")

    with Producer(url, queue) as producer:
        producer.send_many([b"a", b"b", b"c"])
        with Consumer(producer.bus, queue, retry=RetryPolicy(base=0.01, jitter=False)) as consumer:
            assert consumer.run(flaky, max_messages=6) == 6
            stats = consumer.stats()
    latency = check_shape(stats.latency_ms)
    # queue wait: first deliveries; processing: every handled delivery; end to end: the three that were done
    assert (stats.processed, stats.retried) == (3, 3)
    assert counts(latency) == (3, 6, 3)


def test_a_send_time_ahead_of_our_clock_counts_as_zero_wait(queue: str) -> None:
    url = f"memory://latency-{uuid.uuid4().hex}"
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        bus.send(queue, Message(b"from a host whose clock is a minute ahead", timestamp=time.time() + 60.0))
        with Consumer(bus, queue) as consumer:
            consumer.run(sleepy, max_messages=1)
            latency = check_shape(consumer.stats().latency_ms)
    assert latency["queue_wait"]["count"] == 1 and latency["queue_wait"]["max"] == 0.0
    assert latency["end_to_end"] == latency["processing"]  # zero wait + processing
    assert latency["processing"]["max"] >= SLEEP * 1000


def test_worker_pool_threads_record_from_every_worker(queue: str) -> None:
    url = f"memory://latency-{uuid.uuid4().hex}"
    n = 40
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        for i in range(n):
            bus.send(queue, f"job {i}".encode())
        with WorkerPool(url, queue, sleepy, workers=4) as pool:
            wait_until(lambda: pool.stats().processed >= n, f"{n} processed")
            # the counter the pool's thread workers count into (and its Dispatchers record into)
            latency = check_shape(pool._counter.snapshot().latency_ms)
    assert counts(latency) == (n, n, n)  # four threads at once, no sample lost
    assert latency["processing"]["p50"] >= SLEEP * 1000


def test_worker_pool_stats_carry_latency(queue: str) -> None:
    url = f"memory://latency-{uuid.uuid4().hex}"
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        bus.send(queue, b"job")
        with WorkerPool(url, queue, sleepy, workers=1) as pool:
            wait_until(lambda: pool.stats().processed >= 1, "1 processed")
            latency = check_shape(pool.stats().latency_ms)
    assert counts(latency) == (1, 1, 1)


def test_process_workers_record_no_latency() -> None:
    # A worker process counts into shared slots, not a StatsCounter: it has no histograms to fill, so a process
    # pool's latency_ms stays None rather than showing counts of 0.
    counts_array = multiprocessing.get_context("spawn").RawArray("q", 7)
    dispatch = Dispatcher("jobs", sleepy, retry=RetryPolicy(), max_attempts=5, dead_letter="jobs.dlq",
                          count=_SharedCount(counts_array, 0))
    assert dispatch.latency is None


class SkipCounter(StatsCounter):
    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0


def test_skipped_duplicates_are_not_handled_so_not_timed(queue: str) -> None:
    counter = SkipCounter()
    store = MemoryDedupStore(key=lambda m: m.key or "")
    dispatch = Dispatcher(queue, sleepy, retry=RetryPolicy(), max_attempts=5, dead_letter=f"{queue}.dlq",
                          count=counter.add, idempotency=store)
    assert dispatch.latency is not None
    with ringbus.connect(f"memory://latency-{uuid.uuid4().hex}") as bus:
        bus.declare_queue(queue)
        bus.send(queue, b"order 1", key="order-1")
        bus.send(queue, b"order 1 again", key="order-1")
        for _ in range(2):
            message = bus.receive(queue, timeout=5.0)
            assert message is not None
            dispatch(bus, message)
        assert bus.queue_stats(queue).acked == 2
    stats = counter.snapshot()
    assert (stats.processed, counter.skipped) == (1, 1)
    assert counts(check_shape(stats.latency_ms)) == (1, 1, 1)


def test_latency_can_be_switched_off(monkeypatch: pytest.MonkeyPatch, queue: str) -> None:
    assert StatsCounter(latency=False).latency_recorder() is None
    assert StatsCounter(latency=False).snapshot().latency_ms is None
    assert StatsCounter().snapshot().latency_ms is None  # on, but no Dispatcher asked: nothing measured
    monkeypatch.setenv(LATENCY_ENV, "0")
    url = f"memory://latency-{uuid.uuid4().hex}"
    with Producer(url, queue) as producer:
        producer.send(b"x")
        with Consumer(producer.bus, queue) as consumer:
            consumer.run(lambda m: None, max_messages=1)
            stats = consumer.stats()
    assert stats.processed == 1 and stats.latency_ms is None  # counters stay
    monkeypatch.setenv(LATENCY_ENV, "sometimes")
    with pytest.raises(ValueError, match=LATENCY_ENV):
        StatsCounter()


def test_windows_roll_like_the_broker_queues() -> None:
    latency = PatternLatency()
    message = Message(b"x", timestamp=time.time())
    now = time.monotonic()
    latency.record(message, now, now + 0.001, True)
    latency.record(message, now, now + 0.002, True)
    assert latency.summary()["processing"]["count"] == 2
    later = now + WINDOW + 1.0  # one window on: the earlier samples are the previous window, still reported
    latency.record(message, later, later + 0.003, True)
    summary = latency.latency_ms(later + 0.003)
    assert summary["processing"]["count"] == 3 and summary["processing"]["max"] == 3.0
    much_later = later + 2 * WINDOW + 1.0  # two windows on: only the newest sample is left
    latency.record(message, much_later, much_later + 0.004, True)
    summary = latency.latency_ms(much_later + 0.004)
    assert summary["processing"]["count"] == 1 and summary["processing"]["max"] == 4.0


@pytest.mark.parametrize("kind", ["convoy", "levelled", "priority"])
def test_other_patterns_stats_carry_latency(queue: str, kind: str) -> None:
    from ringbus.patterns import LevelledConsumer, PriorityConsumer, PrioritySender, SequentialConvoy

    url = f"memory://latency-{uuid.uuid4().hex}"
    with ringbus.connect(url) as bus:
        if kind == "convoy":
            pattern: Any = SequentialConvoy(url, queue, sleepy, workers=1).start()  # declares its queue
            bus.send(queue, b"job", key="order-1")
        elif kind == "priority":
            sender = PrioritySender(bus, queue)
            sender.declare()
            sender.send(b"job", "high")
            pattern = PriorityConsumer(url, queue, sleepy).start()
        else:
            bus.declare_queue(queue)
            bus.send(queue, b"job")
            pattern = LevelledConsumer(url, queue, sleepy, rate=1000.0).start()
        try:
            wait_until(lambda: pattern.stats().processed >= 1, "1 processed")
            latency = check_shape(pattern.stats().latency_ms)
        finally:
            pattern.stop()
    assert counts(latency) == (1, 1, 1)
