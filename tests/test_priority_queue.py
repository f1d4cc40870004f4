"""PriorityQueue: highest priority first, FIFO among equals, bounds, bad input, close, blocking (c and py)."""

from __future__ import annotations

import queue

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ringbus
from ringbus import Closed, Empty, Full

LONG = 30.0  # a wait that must be ended by the other thread, never by its timeout
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# --------------------------------------------------------------------------- order


def test_highest_priority_first(impl):
    q = impl.PriorityQueue()
    for prio in [3, 1, 4, 1, 5, 9, 2, 6]:
        q.put(f"p{prio}", prio)
    assert [q.get() for _ in range(8)] == ["p9", "p6", "p5", "p4", "p3", "p2", "p1", "p1"]


def test_fifo_among_equal_priorities(impl):
    q = impl.PriorityQueue()
    for i in range(200):
        q.put(i)  # default priority 0
    assert q.get_many(500) == list(range(200))


def test_interleaved_priorities_keep_fifo_per_level(impl):
    q = impl.PriorityQueue()
    for i in range(300):
        q.put((i % 3, i), priority=i % 3)
    got = q.get_many(300)
    expected = [(p, i) for p in (2, 1, 0) for i in range(300) if i % 3 == p]
    assert got == expected


def test_negative_priorities(impl):
    q = impl.PriorityQueue()
    q.put("low", -10)
    q.put("default")
    q.put("lower", -11)
    q.put("high", 1)
    assert q.get_many(4) == ["high", "default", "low", "lower"]


def test_int64_bounds(impl):
    q = impl.PriorityQueue()
    q.put("min", INT64_MIN)
    q.put("max", INT64_MAX)
    q.put("zero", 0)
    q.put("max-1", INT64_MAX - 1)
    q.put("min+1", INT64_MIN + 1)
    assert q.get_many(5) == ["max", "max-1", "zero", "min+1", "min"]


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, 2**64, -(2**100), 10**30])
def test_priority_beyond_int64_overflows(impl, bad):
    q = impl.PriorityQueue(4)
    with pytest.raises(OverflowError, match="priority"):
        q.put("x", bad)
    with pytest.raises(OverflowError, match="priority"):
        q.put_nowait("x", bad)
    with pytest.raises(OverflowError, match="priority"):
        q.put_many(["x"], bad)
    assert len(q) == 0


@pytest.mark.parametrize("bad", [1.0, 0.5, float("nan"), "1", b"1", None, [1], 1j], ids=repr)
def test_priority_must_be_an_int(impl, bad):
    q = impl.PriorityQueue(4)
    with pytest.raises(TypeError, match="priority"):
        q.put("x", bad)
    with pytest.raises(TypeError, match="priority"):
        q.put("x", priority=bad, block=False)
    with pytest.raises(TypeError, match="priority"):
        q.put_nowait("x", bad)
    with pytest.raises(TypeError, match="priority"):
        q.put_many(["x"], bad)
    assert len(q) == 0


def test_priority_accepts_index_types(impl):
    np = pytest.importorskip("numpy")
    q = impl.PriorityQueue()
    q.put("np8", np.int8(3))
    q.put("np64", np.int64(INT64_MAX))
    q.put("bool", True)
    q.put("zero", False)
    assert q.get_many(4) == ["np64", "np8", "bool", "zero"]
    with pytest.raises(TypeError, match="priority"):
        q.put("f", np.float64(1.0))
    with pytest.raises(OverflowError, match="priority"):
        q.put("u", np.uint64(2**64 - 1))


def test_priority_is_checked_even_when_closed(impl):
    q = impl.PriorityQueue()
    q.close()
    with pytest.raises(TypeError, match="priority"):
        q.put("x", "high")
    with pytest.raises(Closed):
        q.put("x", 1)


@given(pairs=st.lists(st.tuples(st.integers(INT64_MIN, INT64_MAX) | st.integers(-3, 3), st.integers()), max_size=60))
def test_order_matches_a_stable_sort(impl, pairs):
    q = impl.PriorityQueue()
    for i, (prio, value) in enumerate(pairs):
        q.put((i, value), prio)
    expected = [(i, v) for i, (p, v) in sorted(enumerate(pairs), key=lambda e: -e[1][0])]
    assert q.get_many(len(pairs) + 1) == expected


def test_put_many_shares_one_priority(impl):
    q = impl.PriorityQueue()
    assert q.put_many(["a", "b"], priority=1) == 2
    assert q.put_many(["c", "d"]) == 2
    assert q.put_many(["e"], 5) == 1
    assert q.get_many(10) == ["e", "a", "b", "c", "d"]


def test_order_survives_growth(impl):
    # far past the initial allocation, with ties, so the heap regrows while ordered
    q = impl.PriorityQueue()
    n = 5000
    for i in range(n):
        q.put(i, priority=(i * 7919) % 13)
    got = q.get_many(n)
    assert got == sorted(range(n), key=lambda i: (-((i * 7919) % 13), i))


# --------------------------------------------------------------------------- capacity


def test_unbounded_by_default(impl):
    q = impl.PriorityQueue()
    assert q.capacity is None
    assert impl.PriorityQueue(None).capacity is None
    assert q.put_many(list(range(10_000))) == 10_000
    assert not q.full()
    assert len(q) == 10_000
    assert q.statistics().capacity is None


@pytest.mark.parametrize("capacity", [1, 2, 3, 63, 64, 65, 100])
def test_bounded_capacity_is_exact(impl, capacity):
    q = impl.PriorityQueue(capacity)
    assert q.capacity == capacity
    for i in range(capacity):
        assert not q.full()
        q.put_nowait(i, i % 4)
    assert q.full() and len(q) == capacity
    with pytest.raises(Full):
        q.put_nowait("x", INT64_MAX)  # priority does not buy room
    with pytest.raises(Full):
        q.put("x", 0, block=False)
    with pytest.raises(Full):
        q.put("x", timeout=0)
    assert q.put_many(["x"], 9) == 0
    assert len(q) == capacity


def test_put_many_returns_how_many_fit(impl):
    q = impl.PriorityQueue(4)
    assert q.put_many([1, 2, 3], 0) == 3
    assert q.put_many([4, 5, 6], 1) == 1
    assert q.get_many(10) == [4, 1, 2, 3]


def test_put_many_takes_no_more_than_fits_from_a_huge_sequence(impl):
    q = impl.PriorityQueue(3)
    q.put("x", 1)
    assert q.put_many(range(10**15), 2) == 2
    assert q.put_many(range(10**15)) == 0
    assert q.get_many(5) == [0, 1, "x"]


@pytest.mark.parametrize("bad", [0, -1])
def test_capacity_below_one_is_refused(impl, bad):
    with pytest.raises(ValueError, match="capacity"):
        impl.PriorityQueue(bad)


@pytest.mark.parametrize("bad", [1.0, "3", [3]])
def test_capacity_must_be_an_int_or_none(impl, bad):
    with pytest.raises(TypeError, match="capacity"):
        impl.PriorityQueue(bad)


def test_huge_capacity_overflows(impl):
    with pytest.raises(OverflowError, match="capacity"):
        impl.PriorityQueue(2**64)


# --------------------------------------------------------------------------- nowait / timeouts / bad input


def test_empty_raises_empty(impl):
    q = impl.PriorityQueue()
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(Empty, match="timed out"):
        q.get(timeout=0.02)
    with pytest.raises(Empty):
        q.get(timeout=0)


def test_full_raises_full_after_timeout(impl):
    q = impl.PriorityQueue(1)
    q.put(1)
    with pytest.raises(Full, match="timed out"):
        q.put(2, timeout=0.02)
    with pytest.raises(queue.Full):
        q.put(2, 100, timeout=0.02)
    assert q.get_many(3) == [1]


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan")])
def test_bad_timeout_is_a_value_error(impl, bad):
    q = impl.PriorityQueue(1)
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=bad)
    q.put(1)
    with pytest.raises(ValueError, match="timeout"):
        q.put(2, timeout=bad)


@pytest.mark.parametrize("bad", ["1", True, None.__class__])
def test_timeout_of_wrong_type_is_a_type_error(impl, bad):
    q = impl.PriorityQueue(1)
    with pytest.raises(TypeError, match="timeout"):
        q.get(timeout=bad)


@pytest.mark.parametrize("bad", [None, 5, {1}, {1: 1}, (x for x in [1])], ids=lambda v: type(v).__name__)
def test_put_many_refuses_non_sequences(impl, bad):
    q = impl.PriorityQueue()
    with pytest.raises(TypeError, match="items must be a sequence"):
        q.put_many(bad)
    assert len(q) == 0


def test_get_many_checks_max_items(impl):
    q = impl.PriorityQueue()
    q.put(1)
    with pytest.raises(TypeError, match="max_items"):
        q.get_many(1.0)
    with pytest.raises(ValueError, match="max_items"):
        q.get_many(-1)
    with pytest.raises(OverflowError, match="max_items"):
        q.get_many(2**64)
    assert q.get_many(0) == []
    assert q.get_many(5) == [1]
    assert q.get_many(5) == []


# --------------------------------------------------------------------------- close / introspection


def test_close_semantics(impl):
    q = impl.PriorityQueue(5)
    q.put("low", -1)
    q.put("high", 1)
    q.put("mid")
    q.close()
    assert q.closed
    for put in (lambda: q.put("x"), lambda: q.put_nowait("x", 3), lambda: q.put("x", timeout=0.01)):
        with pytest.raises(Closed):
            put()
    with pytest.raises(Closed):
        q.put_many(["x"])
    assert len(q) == 3
    assert q.get() == "high"
    assert q.get_many(1) == ["mid"]
    assert q.get_nowait() == "low"
    with pytest.raises(Closed):
        q.get()
    with pytest.raises(Closed):
        q.get_nowait()
    with pytest.raises(Closed):
        q.get(timeout=LONG)
    with pytest.raises(Closed):
        q.get_many(3)
    q.close()  # idempotent
    assert q.closed


def test_len_qsize_empty_full_clear(impl):
    q = impl.PriorityQueue(3)
    assert (len(q), q.qsize(), q.empty(), q.full()) == (0, 0, True, False)
    q.put_many([1, 2, 3])
    assert (len(q), q.qsize(), q.empty(), q.full()) == (3, 3, False, True)
    assert q.clear() == 3
    assert (len(q), q.qsize(), q.empty(), q.full()) == (0, 0, True, False)
    assert q.clear() == 0
    q.put(4)
    assert q.get() == 4


def test_statistics(impl):
    q = impl.PriorityQueue(7)
    q.put_many([1, 2])
    s = q.statistics()
    assert isinstance(s, ringbus.QueueStatistics)
    assert (s.size, s.capacity, s.getters_waiting, s.putters_waiting, s.closed) == (2, 7, 0, 0, False)
    q.close()
    assert q.statistics().closed


def test_repr_and_generic_alias(impl):
    q = impl.PriorityQueue(4)
    q.put(1)
    assert repr(q) == "<ringbus.PriorityQueue size=1 capacity=4>"
    q.close()
    assert repr(q) == "<ringbus.PriorityQueue size=1 capacity=4 closed>"
    assert repr(impl.PriorityQueue()) == "<ringbus.PriorityQueue size=0 capacity=None>"
    assert impl.PriorityQueue[str].__args__ == (str,)


def test_keyword_arguments(impl):
    q = impl.PriorityQueue(capacity=3)
    q.put(item="a", priority=1, block=True, timeout=None)
    q.put_nowait(item="b", priority=2)
    assert q.put_many(items=["c"], priority=3) == 1
    assert q.get_many(max_items=3) == ["c", "b", "a"]


# --------------------------------------------------------------------------- blocking across threads


def test_blocked_get_wakes_on_put_and_takes_it(impl, threads, until):
    q = impl.PriorityQueue()
    threads.start(lambda: q.get(timeout=LONG), name="getter")
    until(lambda: q.statistics().getters_waiting == 1, "the getter to block")
    q.put("x", 3)
    assert threads.join()["getter"] == "x"


def test_blocked_get_wakes_on_put_many(impl, threads, until):
    q = impl.PriorityQueue()
    for k in range(2):
        threads.start(lambda: q.get(timeout=LONG), name=f"g{k}")
    until(lambda: q.statistics().getters_waiting == 2, "two getters to block")
    assert q.put_many(["a", "b"], 1) == 2
    assert sorted(threads.join().values()) == ["a", "b"]


def test_blocked_getters_wake_on_close(impl, threads, until):
    q = impl.PriorityQueue()

    def getter():
        with pytest.raises(Closed):
            q.get(timeout=LONG)
        return "closed"

    for k in range(3):
        threads.start(getter, name=f"g{k}")
    until(lambda: q.statistics().getters_waiting == 3, "three getters to block")
    q.close()
    assert list(threads.join().values()) == ["closed"] * 3


@pytest.mark.parametrize("how", ["get", "get_many", "clear"])
def test_blocked_put_wakes_when_room_is_made(impl, threads, until, how):
    q = impl.PriorityQueue(1)
    q.put("old", 0)
    threads.start(lambda: q.put("new", 5, timeout=LONG), name="putter")
    until(lambda: q.statistics().putters_waiting == 1, "the putter to block")
    getattr(q, how)(*([1] if how == "get_many" else []))
    threads.join()
    assert q.get_nowait() == "new"


def test_blocked_put_wakes_on_close(impl, threads, until):
    q = impl.PriorityQueue(1)
    q.put("kept")

    def putter():
        with pytest.raises(Closed):
            q.put("refused", 9, timeout=LONG)

    for _ in range(2):
        threads.start(putter)
    until(lambda: q.statistics().putters_waiting == 2, "two putters to block")
    q.close()
    threads.join()
    assert q.get_many(5) == ["kept"]


def test_blocked_calls_time_out(impl, threads):
    q = impl.PriorityQueue(1)

    def getter():
        with pytest.raises(Empty):
            q.get(timeout=0.05)

    threads.start(getter)
    threads.join()
    q.put(1)

    def putter():
        with pytest.raises(Full):
            q.put(2, timeout=0.05)

    threads.start(putter)
    threads.join()
    assert q.get_many(2) == [1]
