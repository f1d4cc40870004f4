"""Many producers and consumers on one queue: every item arrives exactly once, nothing accepted is lost.

Capacities are small so that putters and getters really block and wake each
other. Every blocking call has a timeout, so a lost wake-up fails the test
(Full/Empty raised in a worker) instead of hanging it.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from ringbus import Closed, Empty, Full

STEP = 30.0  # timeout of each blocking call; only a bug makes one run out


def exactly_once(counts, total):
    """counts: per-consumer bytearrays of how often each item was seen."""
    seen = np.zeros(total, np.int64)
    for c in counts:
        seen += np.frombuffer(c, np.uint8)
    lost, dup = int((seen == 0).sum()), int((seen > 1).sum())
    assert (lost, dup) == (0, 0), f"{lost} items lost, {dup} delivered more than once"


def producer(q, items, style, seed, put_args=()):
    """Puts every item, in one of several styles so each entry point is exercised."""
    rnd = random.Random(seed)
    if style == "put":
        for i in items:
            q.put(i, *put_args, timeout=STEP)
    elif style == "put_nowait":
        for i in items:
            try:
                q.put_nowait(i, *put_args)
            except Full:
                q.put(i, *put_args, timeout=STEP)
    elif style == "put_many":
        items = list(items)
        k = 0
        while k < len(items):
            batch = items[k : k + rnd.randint(1, 64)]
            n = q.put_many(batch, *put_args)
            if n == 0:  # full: wait for room by putting one item the blocking way
                q.put(batch[0], *put_args, timeout=STEP)
                n = 1
            k += n
    else:  # pragma: no cover
        raise AssertionError(style)


def consumer(q, total, style, seed):
    """Takes items until the queue is closed and drained; returns per-item counts."""
    rnd = random.Random(seed)
    seen = bytearray(total)
    while True:
        try:
            if style == "get":
                seen[q.get(timeout=STEP)] += 1
            elif style == "get_nowait":
                try:
                    i = q.get_nowait()
                except Empty:
                    i = q.get(timeout=STEP)
                seen[i] += 1
            elif style == "get_many":
                batch = q.get_many(rnd.randint(1, 64))
                if not batch:  # empty: wait for one item the blocking way
                    batch = [q.get(timeout=STEP)]
                for i in batch:
                    seen[i] += 1
            else:  # pragma: no cover
                raise AssertionError(style)
        except Closed:
            return seen


def run_exchange(q, threads, total, rng, *, producers=4, consumers=4, priorities=False):
    seed = rng.randrange(2**32)
    p_styles = ["put", "put", "put_nowait", "put_many"]
    c_styles = ["get", "get", "get_nowait", "get_many"]
    producer_threads = []
    for k in range(producers):
        items = range(k, total, producers)
        put_args = (k - 2,) if priorities else ()  # each producer its own priority, some negative
        producer_threads.append(
            threads.start(producer, q, items, p_styles[k % 4], seed + k, put_args, name=f"producer-{k}")
        )
    for k in range(consumers):
        threads.start(consumer, q, total, c_styles[k % 4], seed + 100 + k, name=f"consumer-{k}")
    for t in producer_threads:
        t.join(120)
    q.close()  # consumers drain what is left, then see Closed
    results = threads.join()
    exactly_once([results[f"consumer-{k}"] for k in range(consumers)], total)
    assert len(q) == 0
    s = q.statistics()
    assert (s.getters_waiting, s.putters_waiting) == (0, 0)


@pytest.mark.slow
def test_ring_million_items_four_by_four(impl, threads, rng):
    run_exchange(impl.Ring(1024), threads, 1_000_000, rng)


def test_ring_tiny_capacity_many_threads(impl, threads, rng):
    # capacity 1: almost every call blocks, so wake-ups are exercised hard
    run_exchange(impl.Ring(1), threads, 20_000, rng)


@pytest.mark.parametrize("capacity", [256, None], ids=["bounded", "unbounded"])
def test_priority_queue_items_arrive_exactly_once(impl, threads, rng, capacity):
    run_exchange(impl.PriorityQueue(capacity), threads, 200_000, rng, priorities=True)


def test_priority_queue_tiny_capacity(impl, threads, rng):
    run_exchange(impl.PriorityQueue(1), threads, 20_000, rng, priorities=True)


@pytest.mark.parametrize("kind", ["Ring", "PriorityQueue"])
def test_close_mid_stream_loses_nothing_accepted(impl, threads, until, kind):
    """Close while producers and consumers are busy: each accepted item is delivered once;
    a put refused with Closed was not accepted."""
    q = getattr(impl, kind)(64)
    per_producer, producers, consumers = 1_000_000, 3, 3
    total = per_producer * producers
    delivered = [0] * consumers

    def produce(k):
        accepted = bytearray(total)
        for i in range(k, total, producers):
            try:
                q.put(i, timeout=STEP)
            except Closed:
                return accepted
            accepted[i] = 1
        raise AssertionError("the producer ran out of items before close()")

    def consume(k):
        seen = bytearray(total)
        while True:
            try:
                seen[q.get(timeout=STEP)] += 1
            except Closed:
                return seen
            delivered[k] += 1

    for k in range(producers):
        threads.start(produce, k, name=f"p{k}")
    for k in range(consumers):
        threads.start(consume, k, name=f"c{k}")
    until(lambda: sum(delivered) >= 20_000, "some items to flow")
    q.close()
    results = threads.join()
    accepted = np.zeros(total, np.int64)
    for k in range(producers):
        accepted += np.frombuffer(results[f"p{k}"], np.uint8)
    seen = np.zeros(total, np.int64)
    for k in range(consumers):
        seen += np.frombuffer(results[f"c{k}"], np.uint8)
    assert (accepted <= 1).all()
    assert (seen == accepted).all(), (
        f"{int(((accepted == 1) & (seen == 0)).sum())} accepted items lost, "
        f"{int((seen > accepted).sum())} delivered more often than accepted"
    )
    assert len(q) == 0
