"""Reference counts and memory: the queues own exactly one reference per held item and leak nothing.

The native core moves raw PyObject pointers through C, so a missed INCREF or
DECREF on any path (success, Full, Closed, timeout, clear, dealloc) shows up
here as a drift of sys.getrefcount. The twin runs the same checks: it must
agree, and it guards the tests themselves.
"""

from __future__ import annotations

import gc
import sys
import threading
import tracemalloc

import numpy as np
import pytest

from ringbus import Closed, Empty, Full

CYCLES = 1_000_000


class Tracked:
    """Counts live instances, so a leaked item is noticed even if nothing refers to it by name."""

    live = 0
    lock = threading.Lock()

    def __init__(self):
        with Tracked.lock:
            Tracked.live += 1

    def __del__(self):
        with Tracked.lock:
            Tracked.live -= 1


@pytest.fixture
def sentinel():
    """A fresh object nothing else refers to; each test compares its refcount before and after."""
    return object()


@pytest.fixture
def no_live_items():
    gc.collect()
    before = Tracked.live
    yield
    gc.collect()
    assert Tracked.live == before, f"{Tracked.live - before} Tracked items never freed"


def refs(obj):
    return sys.getrefcount(obj) - 1  # minus the argument's own reference


# --------------------------------------------------------------------------- Ring


@pytest.mark.slow
def test_ring_put_get_million_cycles(impl, sentinel):
    q = impl.Ring(8)
    start = refs(sentinel)
    put, get = q.put, q.get
    for _ in range(CYCLES):
        put(sentinel)
        get()
    assert refs(sentinel) == start
    # and with the ring kept part full, so slots are reused at every offset
    q.put_many([None] * 5)
    for _ in range(CYCLES // 10):
        put(sentinel)
        get()
    q.clear()
    assert refs(sentinel) == start


def test_ring_holds_exactly_one_reference_per_item(impl, sentinel):
    q = impl.Ring(10)
    start = refs(sentinel)
    q.put(sentinel)
    q.put(sentinel)
    assert refs(sentinel) == start + 2
    q.get()
    assert refs(sentinel) == start + 1
    item = q.get()
    assert item is sentinel
    del item
    assert refs(sentinel) == start


def test_ring_put_many_get_many(impl, sentinel):
    q = impl.Ring(64)
    start = refs(sentinel)
    batch = [sentinel] * 100
    with_batch = refs(sentinel)
    for _ in range(20_000):
        assert q.put_many(batch) == 64  # the 36 left over stay the caller's
        assert refs(sentinel) == with_batch + 64
        got = q.get_many(100)
        assert len(got) == 64
        del got
        assert refs(sentinel) == with_batch
    # tuples and other sequences go through the copying path
    for _ in range(20_000):
        q.put_many(tuple(batch[:10]))
        q.get_many(7)
        q.get_many(7)
    del batch
    assert refs(sentinel) == start


def test_ring_clear_releases(impl, sentinel):
    q = impl.Ring(32)
    start = refs(sentinel)
    for _ in range(20_000):
        q.put_many([sentinel] * 40)
        assert q.clear() == 32
    assert refs(sentinel) == start


def test_ring_dealloc_releases_held_items(impl, sentinel, no_live_items):
    start = refs(sentinel)
    for _ in range(2_000):
        q = impl.Ring(16)
        q.put_many([sentinel] * 10 + [Tracked() for _ in range(6)])
        del q
    gc.collect()
    assert refs(sentinel) == start


def test_ring_refused_puts_take_no_reference(impl, sentinel):
    q = impl.Ring(2)
    q.put_many([None, None])
    start = refs(sentinel)
    for _ in range(50_000):
        try:
            q.put_nowait(sentinel)
        except Full:
            pass
        try:
            q.put(sentinel, timeout=0)
        except Full:
            pass
        assert q.put_many([sentinel]) == 0
    assert refs(sentinel) == start
    for _ in range(20):
        try:
            q.put(sentinel, timeout=0.001)  # the waiting path, timed out
        except Full:
            pass
    for bad in (-1, float("nan"), "x"):
        with pytest.raises((ValueError, TypeError)):
            q.put(sentinel, timeout=bad)
    assert refs(sentinel) == start
    q.close()
    for _ in range(50_000):
        try:
            q.put(sentinel)
        except Closed:
            pass
        try:
            q.put_many([sentinel])
        except Closed:
            pass
    assert refs(sentinel) == start
    assert q.get_many(5) == [None, None]


def test_ring_put_refused_by_close_while_waiting(impl, sentinel, threads, until):
    q = impl.Ring(1)
    q.put(None)
    start = refs(sentinel)

    def putter():
        with pytest.raises(Closed):
            q.put(sentinel, timeout=30)

    threads.start(putter)
    until(lambda: q.statistics().putters_waiting == 1, "the putter to block")
    q.close()
    threads.join()
    gc.collect()
    assert refs(sentinel) == start


def test_ring_get_paths_release(impl, sentinel):
    q = impl.Ring(4)
    start = refs(sentinel)
    for _ in range(50_000):
        q.put(sentinel)
        q.get_nowait()
        q.put(sentinel)
        q.get(timeout=0)
        try:
            q.get_nowait()
        except Empty:
            pass
    assert refs(sentinel) == start


def test_ring_items_are_freed(impl, no_live_items):
    q = impl.Ring(100)
    for _ in range(2_000):
        q.put_many([Tracked() for _ in range(50)])
        q.get()
        q.get_many(20)
        q.put(Tracked())
        q.clear()
    q.put(Tracked())
    q.close()
    q.get()


# --------------------------------------------------------------------------- PriorityQueue


@pytest.mark.slow
def test_priority_queue_put_get_million_cycles(impl, sentinel):
    q = impl.PriorityQueue(8)
    start = refs(sentinel)
    put, get = q.put, q.get
    for i in range(CYCLES):
        put(sentinel, i & 7)
        get()
    assert refs(sentinel) == start


@pytest.mark.parametrize("capacity", [None, 50])
def test_priority_queue_paths_release(impl, sentinel, capacity):
    q = impl.PriorityQueue(capacity)
    start = refs(sentinel)
    batch = [sentinel] * 100
    for i in range(5_000):
        n = q.put_many(batch, i % 5)
        q.get_many(n // 2)
        q.clear()
        q.put(sentinel, -i)
        q.put_nowait(sentinel, i)
        q.get()
        q.get_nowait()
    del batch
    assert refs(sentinel) == start
    for bad in (1.5, "p", 2**64):
        with pytest.raises((TypeError, OverflowError)):
            q.put(sentinel, bad)
        with pytest.raises((TypeError, OverflowError)):
            q.put_many([sentinel], bad)
    assert refs(sentinel) == start


def test_priority_queue_refused_puts_take_no_reference(impl, sentinel):
    q = impl.PriorityQueue(1)
    q.put(None)
    start = refs(sentinel)
    for _ in range(50_000):
        try:
            q.put_nowait(sentinel, 5)
        except Full:
            pass
        assert q.put_many([sentinel]) == 0
    for _ in range(20):
        try:
            q.put(sentinel, timeout=0.001)
        except Full:
            pass
    q.close()
    for _ in range(50_000):
        try:
            q.put(sentinel)
        except Closed:
            pass
    assert refs(sentinel) == start


def test_priority_queue_dealloc_releases_held_items(impl, sentinel, no_live_items):
    start = refs(sentinel)
    for capacity in (None, 200):
        for _ in range(1_000):
            q = impl.PriorityQueue(capacity)
            q.put_many([sentinel] * 150, 3)  # grows past the first allocation
            q.put_many([Tracked() for _ in range(10)], -3)
            del q
    gc.collect()
    assert refs(sentinel) == start


# --------------------------------------------------------------------------- memory (tracemalloc)


def _traced_growth(fn, rounds):
    """Bytes still allocated after rounds of fn beyond a warmed-up start."""
    fn()  # warm up: caches, free lists, first-time allocations
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(rounds):
            fn()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before


LEAK_BOUND = 64 * 1024  # a leak of even 8 bytes per round would exceed this many times over


def test_ring_allocates_nothing_that_stays(impl):
    q = impl.Ring(64)
    payload = [object() for _ in range(40)]

    def cycle():
        for x in payload:
            q.put(x)
        for _ in payload:
            q.get()
        q.put_many(payload)
        q.get_many(64)
        q.put_many(payload)
        q.clear()
        try:
            q.get_nowait()
        except Empty:
            pass

    assert _traced_growth(cycle, 5_000) < LEAK_BOUND


def test_priority_queue_allocates_nothing_that_stays(impl):
    q = impl.PriorityQueue()
    payload = [object() for _ in range(40)]

    def cycle():
        for i, x in enumerate(payload):
            q.put(x, i % 3)
        q.get_many(100)
        q.put_many(payload, 2)
        q.clear()

    assert _traced_growth(cycle, 5_000) < LEAK_BOUND


def test_array_ring_allocates_nothing_that_stays(impl):
    ar = impl.ArrayRing("f8", 100)
    data = np.arange(70.0)
    out = np.empty(50)

    def cycle():
        ar.put_many(data)
        ar.get_many(30)
        ar.get_many(50, out=out)
        ar.put_many(data[::2])
        ar.clear()

    assert _traced_growth(cycle, 10_000) < LEAK_BOUND


def test_creating_and_dropping_queues_leaks_nothing(impl):
    def cycle():
        q = impl.Ring(100)
        q.put_many(list(range(50)))
        pq = impl.PriorityQueue(100)
        pq.put_many(list(range(50)), 1)
        ar = impl.ArrayRing("i4", 100)
        ar.put_many(np.arange(50, dtype="i4"))
        del q, pq, ar

    assert _traced_growth(cycle, 2_000) < LEAK_BOUND
