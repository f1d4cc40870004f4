"""Ring: bounded FIFO semantics, bad input, close, and blocking across threads (native core and twin)."""

from __future__ import annotations

import dataclasses
import queue
import signal
import threading

import pytest

import ringbus
from ringbus import Closed, Empty, Full

LONG = 30.0  # a wait that must be ended by the other thread, never by its timeout


# --------------------------------------------------------------------------- exceptions


def test_exceptions_are_the_builtin_queue_ones():
    assert issubclass(ringbus.Full, queue.Full)
    assert issubclass(ringbus.Empty, queue.Empty)
    for exc in (ringbus.Full, ringbus.Empty, ringbus.Closed):
        assert issubclass(exc, ringbus.RingbusError)
    assert not issubclass(ringbus.Closed, (queue.Full, queue.Empty))


def test_full_and_empty_are_catchable_as_queue_exceptions(impl):
    q = impl.Ring(1)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    q.put_nowait(1)
    with pytest.raises(queue.Full):
        q.put_nowait(2)


# --------------------------------------------------------------------------- FIFO and capacity


def test_fifo_order(impl):
    q = impl.Ring(100)
    for i in range(100):
        q.put(i)
    assert [q.get() for _ in range(100)] == list(range(100))


def test_items_are_the_same_objects(impl):
    q = impl.Ring(8)
    items = [object(), None, (1, 2), [3], "s", b"b", 1.5, q]
    for item in items:
        q.put_nowait(item)
    for item in items:
        assert q.get_nowait() is item


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 7, 8, 9, 63, 64, 65, 1000, 1023, 1024, 1025])
def test_capacity_is_exact(impl, capacity):
    q = impl.Ring(capacity)
    assert q.capacity == capacity
    # several laps, so slots past a power-of-two boundary are reused
    for lap in range(3):
        for i in range(capacity):
            assert not q.full()
            q.put_nowait((lap, i))
        assert len(q) == capacity
        assert q.full()
        with pytest.raises(Full):
            q.put_nowait("one too many")
        with pytest.raises(Full):
            q.put("one too many", block=False)
        assert q.put_many(["one too many"]) == 0
        assert len(q) == capacity
        assert [q.get_nowait() for _ in range(capacity)] == [(lap, i) for i in range(capacity)]
        assert q.empty()


def test_capacity_stays_exact_when_offset(impl):
    q = impl.Ring(5)
    for i in range(3):
        q.put(i)
    for _ in range(2):
        q.get()
    for i in range(3, 7):
        q.put_nowait(i)
    with pytest.raises(Full):
        q.put_nowait(99)
    assert q.get_many(10) == [2, 3, 4, 5, 6]


def test_put_nowait_and_get_nowait(impl):
    q = impl.Ring(2)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(block=False)
    with pytest.raises(Empty):
        q.get(False, 10.0)  # block=False ignores the timeout
    q.put_nowait("a")
    q.put("b", block=False)
    with pytest.raises(Full):
        q.put_nowait("c")
    with pytest.raises(Full):
        q.put("c", False, 10.0)
    assert q.get_nowait() == "a"
    assert q.get(block=False) == "b"


def test_zero_timeout_does_not_wait(impl):
    q = impl.Ring(1)
    with pytest.raises(Empty):
        q.get(timeout=0)
    q.put(1, timeout=0)
    with pytest.raises(Full):
        q.put(2, timeout=0)
    with pytest.raises(Full):
        q.put(2, timeout=0.0)
    assert q.get(timeout=0) == 1


def test_timeouts_raise_full_and_empty(impl):
    q = impl.Ring(1)
    with pytest.raises(Empty, match="timed out"):
        q.get(timeout=0.02)
    q.put(1)
    with pytest.raises(Full, match="timed out"):
        q.put(2, timeout=0.02)
    assert list(q.get_many(5)) == [1]


def test_int_timeout_and_huge_timeout_are_accepted(impl):
    q = impl.Ring(2)
    q.put(1, timeout=1)
    q.put(2, timeout=float("inf"))  # room: never waits
    assert q.get(timeout=10**6) == 1
    assert q.get(timeout=float("inf")) == 2


# --------------------------------------------------------------------------- put_many / get_many


def test_put_many_returns_how_many_fit(impl):
    q = impl.Ring(5)
    assert q.put_many([0, 1, 2]) == 3
    assert q.put_many((3, 4, 5, 6)) == 2
    assert q.put_many([7]) == 0
    assert q.get_many(100) == [0, 1, 2, 3, 4]


def test_put_many_accepts_sequences(impl):
    q = impl.Ring(10)
    assert q.put_many([]) == 0
    assert q.put_many(()) == 0
    assert q.put_many(range(3)) == 3
    assert q.put_many("ab") == 2
    assert q.put_many(b"\x07") == 1
    assert q.get_many(10) == [0, 1, 2, "a", "b", 7]


@pytest.mark.parametrize(
    "bad", [None, 3, {1, 2}, {1: 2}, iter([1]), (x for x in [1]), object()], ids=lambda v: type(v).__name__
)
def test_put_many_refuses_non_sequences(impl, bad):
    q = impl.Ring(4)
    with pytest.raises(TypeError, match="items must be a sequence"):
        q.put_many(bad)
    assert len(q) == 0


def test_put_many_takes_no_more_than_fits_from_a_huge_sequence(impl):
    # a lazy sequence must not be copied whole (memory stays bounded): only what fits is read
    q = impl.Ring(5)
    q.put(-1)
    assert q.put_many(range(10**15)) == 4
    assert q.put_many(range(10**15)) == 0
    assert q.get_many(10) == [-1, 0, 1, 2, 3]


def test_put_many_never_blocks(impl):
    q = impl.Ring(2)
    q.put_many([1, 2])
    assert q.put_many(list(range(1000))) == 0  # full: returns at once instead of waiting
    assert q.get_many(2) == [1, 2]


def test_put_many_wraps_around(impl):
    q = impl.Ring(4)
    q.put_many([0, 1, 2])
    assert q.get_many(2) == [0, 1]
    assert q.put_many([3, 4, 5, 6, 7]) == 3
    assert q.get_many(10) == [2, 3, 4, 5]


def test_get_many(impl):
    q = impl.Ring(10)
    assert q.get_many(5) == []
    q.put_many(list(range(7)))
    assert q.get_many(0) == []
    assert q.get_many(3) == [0, 1, 2]
    assert q.get_many(100) == [3, 4, 5, 6]
    assert q.get_many(1) == []
    assert isinstance(q.get_many(1), list)


@pytest.mark.parametrize("bad", [1.0, "2", None, [1]])
def test_get_many_rejects_non_int(impl, bad):
    q = impl.Ring(3)
    with pytest.raises(TypeError, match="max_items"):
        q.get_many(bad)


def test_get_many_rejects_negative(impl):
    q = impl.Ring(3)
    q.put(1)
    with pytest.raises(ValueError, match="max_items"):
        q.get_many(-1)
    assert len(q) == 1


def test_get_many_accepts_index_types(impl):
    np = pytest.importorskip("numpy")
    q = impl.Ring(3)
    q.put_many([1, 2, 3])
    assert q.get_many(np.int64(2)) == [1, 2]
    assert q.get_many(True) == [3]


def test_huge_counts_overflow(impl):
    # both implementations refuse a count that does not fit in a C ssize_t, naming it
    with pytest.raises(OverflowError, match="capacity"):
        impl.Ring(2**64)
    q = impl.Ring(3)
    with pytest.raises(OverflowError, match="max_items"):
        q.get_many(2**64)


# --------------------------------------------------------------------------- bad constructor / timeout input


@pytest.mark.parametrize("bad", [0, -1, -(2**40)])
def test_capacity_below_one_is_refused(impl, bad):
    with pytest.raises(ValueError, match="capacity"):
        impl.Ring(bad)


@pytest.mark.parametrize("bad", [1.0, 2.5, "8", None, [8], float("nan")])
def test_capacity_must_be_an_int(impl, bad):
    with pytest.raises(TypeError, match="capacity"):
        impl.Ring(bad)


def test_capacity_accepts_index_types(impl):
    np = pytest.importorskip("numpy")
    assert impl.Ring(np.int32(4)).capacity == 4
    assert impl.Ring(capacity=3).capacity == 3


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan"), float("-inf")])
def test_bad_timeout_is_a_value_error(impl, bad):
    q = impl.Ring(1)
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=bad)
    q.put(1)
    with pytest.raises(ValueError, match="timeout"):
        q.put(2, timeout=bad)
    assert q.get_many(3) == [1]


@pytest.mark.parametrize("bad", ["1", b"1", True, [1.0], object()], ids=repr)
def test_timeout_of_wrong_type_is_a_type_error(impl, bad):
    q = impl.Ring(1)
    with pytest.raises(TypeError, match="timeout"):
        q.get(timeout=bad)
    q.put(1)
    with pytest.raises(TypeError, match="timeout"):
        q.put(2, timeout=bad)


# --------------------------------------------------------------------------- close


def test_close_refuses_puts(impl):
    q = impl.Ring(3)
    q.put(1)
    q.close()
    assert q.closed
    with pytest.raises(Closed):
        q.put(2)
    with pytest.raises(Closed):
        q.put_nowait(2)
    with pytest.raises(Closed):
        q.put(2, timeout=0.01)
    with pytest.raises(Closed):
        q.put_many([2, 3])
    assert len(q) == 1


def test_close_on_a_full_ring_raises_closed_not_full(impl):
    q = impl.Ring(1)
    q.put(1)
    q.close()
    with pytest.raises(Closed):
        q.put_nowait(2)
    with pytest.raises(Closed):
        q.put(2, timeout=LONG)


def test_get_drains_then_raises_closed(impl):
    q = impl.Ring(4)
    q.put_many([1, 2, 3])
    q.close()
    assert q.get() == 1
    assert q.get_nowait() == 2
    assert q.get(timeout=LONG) == 3
    with pytest.raises(Closed):
        q.get()  # would block forever on an open ring
    with pytest.raises(Closed):
        q.get_nowait()
    with pytest.raises(Closed):
        q.get(timeout=LONG)
    with pytest.raises(Closed):
        q.get(block=False)


def test_get_many_drains_then_raises_closed(impl):
    q = impl.Ring(4)
    q.put_many([1, 2, 3])
    q.close()
    assert q.get_many(0) == []
    assert q.get_many(2) == [1, 2]
    assert q.get_many(2) == [3]
    with pytest.raises(Closed):
        q.get_many(2)
    with pytest.raises(Closed):
        q.get_many(0)


def test_closed_is_not_empty_or_full(impl):
    q = impl.Ring(1)
    q.close()
    with pytest.raises(Closed) as info:
        q.get_nowait()
    assert not isinstance(info.value, (queue.Empty, queue.Full))


def test_close_is_idempotent(impl):
    q = impl.Ring(2)
    q.put(1)
    q.close()
    q.close()
    assert q.closed
    assert q.get() == 1
    with pytest.raises(Closed):
        q.get()


def test_clear_works_on_a_closed_ring(impl):
    q = impl.Ring(3)
    q.put_many([1, 2])
    q.close()
    assert q.clear() == 2
    with pytest.raises(Closed):
        q.get_nowait()


# --------------------------------------------------------------------------- introspection


def test_len_qsize_empty_full(impl):
    q = impl.Ring(3)
    assert (len(q), q.qsize(), q.empty(), q.full()) == (0, 0, True, False)
    q.put(1)
    assert (len(q), q.qsize(), q.empty(), q.full()) == (1, 1, False, False)
    q.put_many([2, 3])
    assert (len(q), q.qsize(), q.empty(), q.full()) == (3, 3, False, True)
    q.get()
    assert (len(q), q.qsize(), q.empty(), q.full()) == (2, 2, False, False)
    q.clear()
    assert (len(q), q.qsize(), q.empty(), q.full()) == (0, 0, True, False)


def test_truthiness_follows_len(impl):
    q = impl.Ring(2)
    assert not q
    q.put(None)
    assert q


def test_clear_returns_count_and_frees_room(impl):
    q = impl.Ring(4)
    assert q.clear() == 0
    q.put_many([1, 2, 3, 4])
    assert q.clear() == 4
    assert len(q) == 0 and q.empty()
    assert q.put_many([5, 6, 7, 8, 9]) == 4
    assert q.get_many(10) == [5, 6, 7, 8]


def test_statistics(impl):
    q = impl.Ring(4)
    s = q.statistics()
    assert isinstance(s, ringbus.QueueStatistics)
    assert (s.size, s.capacity, s.getters_waiting, s.putters_waiting, s.closed) == (0, 4, 0, 0, False)
    q.put_many([1, 2])
    q.close()
    s = q.statistics()
    assert (s.size, s.capacity, s.closed) == (2, 4, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.size = 5  # type: ignore[misc]


def test_capacity_and_closed_are_read_only(impl):
    q = impl.Ring(2)
    with pytest.raises(AttributeError):
        q.capacity = 5
    with pytest.raises(AttributeError):
        q.closed = True
    assert q.capacity == 2 and not q.closed


def test_repr(impl):
    q = impl.Ring(3)
    q.put(1)
    assert repr(q) == "<ringbus.Ring size=1 capacity=3>"
    q.close()
    assert repr(q) == "<ringbus.Ring size=1 capacity=3 closed>"


def test_generic_alias(impl):
    alias = impl.Ring[int]
    assert alias.__origin__ is impl.Ring
    assert alias.__args__ == (int,)


def test_public_ring_is_one_of_the_two(impl):
    assert ringbus.Ring.__module__ in ("ringbus._core._ring", "ringbus._core._ring_py")
    assert ringbus.IMPLEMENTATION in ("c", "py")


# --------------------------------------------------------------------------- blocking across threads


def test_blocked_get_wakes_on_put(impl, threads, until):
    q = impl.Ring(2)
    t = threads.start(lambda: q.get(timeout=LONG), name="getter")
    until(lambda: q.statistics().getters_waiting == 1, "the getter to block")
    q.put("hello")
    results = threads.join()
    assert results["getter"] == "hello"
    assert not t.is_alive()
    assert q.statistics().getters_waiting == 0


def test_blocked_get_without_timeout_wakes_on_put(impl, threads, until):
    q = impl.Ring(2)
    threads.start(q.get, name="getter")
    until(lambda: q.statistics().getters_waiting == 1, "the getter to block")
    q.put(42)
    assert threads.join()["getter"] == 42


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, 9.0e9])
def test_blocked_get_with_unbounded_timeout_wakes_on_put(impl, threads, until, timeout):
    q = impl.Ring(2)
    threads.start(lambda: q.get(timeout=timeout), name="getter")
    until(lambda: q.statistics().getters_waiting == 1, "the getter to block")
    q.put("late")
    assert threads.join()["getter"] == "late"


def test_blocked_get_wakes_on_put_many(impl, threads, until):
    q = impl.Ring(8)
    for k in range(3):
        threads.start(lambda: q.get(timeout=LONG), name=f"getter-{k}")
    until(lambda: q.statistics().getters_waiting == 3, "three getters to block")
    assert q.put_many(["a", "b", "c"]) == 3
    assert sorted(threads.join().values()) == ["a", "b", "c"]
    assert len(q) == 0


def test_blocked_get_wakes_on_close(impl, threads, until):
    q = impl.Ring(2)

    def getter():
        with pytest.raises(Closed):
            q.get(timeout=LONG)
        return "closed"

    for k in range(4):
        threads.start(getter, name=f"getter-{k}")
    until(lambda: q.statistics().getters_waiting == 4, "four getters to block")
    q.close()
    assert list(threads.join().values()) == ["closed"] * 4
    assert q.statistics().getters_waiting == 0


def test_blocked_get_without_timeout_wakes_on_close(impl, threads, until):
    q = impl.Ring(2)

    def getter():
        with pytest.raises(Closed):
            q.get()

    threads.start(getter)
    until(lambda: q.statistics().getters_waiting == 1, "the getter to block")
    q.close()
    threads.join()


def test_blocked_put_wakes_on_get(impl, threads, until):
    q = impl.Ring(1)
    q.put("first")
    threads.start(lambda: q.put("second", timeout=LONG), name="putter")
    until(lambda: q.statistics().putters_waiting == 1, "the putter to block")
    assert q.get() == "first"
    threads.join()
    assert q.get_nowait() == "second"
    assert q.statistics().putters_waiting == 0


@pytest.mark.parametrize("how", ["get_many", "clear", "get_nowait"])
def test_blocked_put_wakes_when_room_is_made(impl, threads, until, how):
    q = impl.Ring(2)
    q.put_many([1, 2])
    threads.start(lambda: q.put(3, timeout=LONG), name="putter")
    until(lambda: q.statistics().putters_waiting == 1, "the putter to block")
    if how == "get_many":
        assert q.get_many(1) == [1]
    elif how == "clear":
        assert q.clear() == 2
    else:
        assert q.get_nowait() == 1
    threads.join()
    assert q.get_many(5)[-1] == 3


def test_blocked_put_wakes_on_close(impl, threads, until):
    q = impl.Ring(1)
    q.put("kept")

    def putter(k):
        with pytest.raises(Closed):
            q.put(("refused", k), timeout=LONG)

    for k in range(3):
        threads.start(putter, k)
    until(lambda: q.statistics().putters_waiting == 3, "three putters to block")
    q.close()
    threads.join()
    # the refused items never entered the ring; the one already held still drains
    assert q.get_many(5) == ["kept"]
    with pytest.raises(Closed):
        q.get_nowait()


def test_blocked_get_times_out_with_empty(impl, threads):
    q = impl.Ring(1)

    def getter():
        with pytest.raises(Empty):
            q.get(timeout=0.05)
        return "timed out"

    for k in range(3):
        threads.start(getter, name=f"g{k}")
    assert set(threads.join().values()) == {"timed out"}
    assert q.statistics().getters_waiting == 0


def test_blocked_put_times_out_with_full(impl, threads):
    q = impl.Ring(1)
    q.put(0)

    def putter():
        with pytest.raises(Full):
            q.put(1, timeout=0.05)
        return "timed out"

    for k in range(3):
        threads.start(putter, name=f"p{k}")
    assert set(threads.join().values()) == {"timed out"}
    assert q.get_many(5) == [0]
    assert q.statistics().putters_waiting == 0


def test_handoff_between_two_threads_keeps_order(impl, threads):
    q = impl.Ring(3)
    n = 20_000

    def producer():
        for i in range(n):
            q.put(i, timeout=LONG)
        q.close()

    def consumer():
        got = []
        while True:
            try:
                got.append(q.get(timeout=LONG))
            except Closed:
                return got

    threads.start(producer, name="producer")
    threads.start(consumer, name="consumer")
    assert threads.join()["consumer"] == list(range(n))


class _Interrupted(Exception):
    pass


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
def test_signal_handler_runs_while_get_waits(impl, threads, until):
    """A blocked get() in the main thread still runs signal handlers (Ctrl-C reaches it)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are handled by the main thread only")
    q = impl.Ring(1)
    done = threading.Event()
    main_ident = threading.main_thread().ident
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        if len(calls) == 1:
            raise _Interrupted

    def kicker():
        until(lambda: q.statistics().getters_waiting == 1, "the main thread to block")
        # resend until the main thread is out: one signal could land before it sleeps
        while not done.wait(0.02):
            signal.pthread_kill(main_ident, signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        threads.start(kicker, name="kicker")
        try:
            with pytest.raises(_Interrupted):
                q.get(timeout=LONG)
        finally:
            done.set()
            threads.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert calls
