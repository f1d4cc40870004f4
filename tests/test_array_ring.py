"""ArrayRing: numpy records in, numpy records out, in order; dtype and shape checks; close; out= (c and py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import ringbus
from ringbus import Closed

RECORD = np.dtype([("id", "<u8"), ("x", "<f4"), ("tag", "S3")])


def threads_yield():
    # ArrayRing has no blocking calls: give the other threads the GIL without spinning hard
    time.sleep(0.0002)


def records(start, stop, dtype=RECORD):
    out = np.zeros(stop - start, dtype)
    if dtype.names:
        out["id"] = np.arange(start, stop)
        out["x"] = np.arange(start, stop) / 2
        out["tag"] = [str(i % 1000).encode() for i in range(start, stop)]
    else:
        out[:] = np.arange(start, stop)
    return out


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", ["f8", "<i4", ">i8", "u1", "c16", "M8[ns]", "V7", RECORD, "i4,f8",
                                   [("a", "f4", (3,))]])
def test_round_trip_keeps_bytes_and_dtype(impl, dtype):
    dt = np.dtype(dtype)
    ar = impl.ArrayRing(dt, 10)
    assert ar.dtype == dt
    data = np.frombuffer(np.random.default_rng(7).bytes(dt.itemsize * 6), dtype=dt)
    assert ar.put_many(data) == 6
    got = ar.get_many(10)
    assert got.dtype == dt
    assert got.shape == (6,)
    assert got.tobytes() == data.tobytes()


def test_fifo_across_the_wrap(impl):
    ar = impl.ArrayRing(RECORD, 5)
    assert ar.put_many(records(0, 3)) == 3
    assert ar.get_many(2).tolist() == records(0, 2).tolist()
    assert ar.put_many(records(3, 10)) == 4  # 1 held + 4 = capacity, wrapping past the end
    assert len(ar) == 5
    got = ar.get_many(100)
    np.testing.assert_array_equal(got, records(2, 7))
    assert len(ar) == 0


def test_many_laps_in_uneven_runs(impl, rng):
    ar = impl.ArrayRing("i8", 7)
    expected = 0
    nxt = 0
    for _ in range(500):
        n = ar.put_many(np.arange(nxt, nxt + rng.randrange(0, 10), dtype="i8"))
        nxt += n
        got = ar.get_many(rng.randrange(0, 10))
        np.testing.assert_array_equal(got, np.arange(expected, expected + len(got)))
        expected += len(got)
    np.testing.assert_array_equal(ar.get_many(10), np.arange(expected, nxt))


def test_put_many_returns_how_many_fit(impl):
    ar = impl.ArrayRing("f8", 4)
    assert ar.put_many(np.arange(3.0)) == 3
    assert ar.put_many(np.arange(10.0, 15.0)) == 1
    assert ar.put_many(np.arange(5.0)) == 0
    assert ar.put_many(np.empty(0)) == 0
    np.testing.assert_array_equal(ar.get_many(10), [0.0, 1.0, 2.0, 10.0])


def test_capacity_is_exact(impl):
    for capacity in (1, 2, 3, 8, 1000):
        ar = impl.ArrayRing("u2", capacity)
        assert ar.capacity == capacity
        assert ar.put_many(np.arange(capacity + 5, dtype="u2")) == capacity
        assert len(ar) == capacity


def test_get_many_copies_out(impl):
    ar = impl.ArrayRing("f8", 4)
    src = np.arange(4.0)
    ar.put_many(src)
    src[:] = -1  # the ring holds a copy, not a view of the caller's array
    got = ar.get_many(2)
    np.testing.assert_array_equal(got, [0.0, 1.0])
    got[:] = 99  # and hands out a copy
    np.testing.assert_array_equal(ar.get_many(2), [2.0, 3.0])


def test_get_many_empty_and_zero(impl):
    ar = impl.ArrayRing("i4", 3)
    got = ar.get_many(5)
    assert got.shape == (0,) and got.dtype == np.dtype("i4")
    ar.put_many(np.arange(2, dtype="i4"))
    assert ar.get_many(0).shape == (0,)
    assert len(ar) == 2


def test_non_contiguous_input_is_accepted(impl):
    ar = impl.ArrayRing("i8", 10)
    base = np.arange(20, dtype="i8")
    assert ar.put_many(base[::3]) == 7
    assert ar.put_many(base[::-1][:3]) == 3
    np.testing.assert_array_equal(ar.get_many(10), [0, 3, 6, 9, 12, 15, 18, 19, 18, 17])


def test_strided_input_is_copied_only_as_far_as_it_fits(impl):
    # a broadcast view of 10**12 records must not be materialised to put 4 of them
    ar = impl.ArrayRing("f8", 5)
    ar.put_many(np.array([0.5]))
    assert ar.put_many(np.broadcast_to(np.float64(1.5), (10**12,))) == 4
    assert ar.put_many(np.broadcast_to(np.float64(2.5), (10**12,))) == 0
    np.testing.assert_array_equal(ar.get_many(10), [0.5, 1.5, 1.5, 1.5, 1.5])


def test_read_only_input_is_accepted(impl):
    ar = impl.ArrayRing("i2", 4)
    src = np.arange(3, dtype="i2")
    src.setflags(write=False)
    assert ar.put_many(src) == 3
    np.testing.assert_array_equal(ar.get_many(3), [0, 1, 2])


# --------------------------------------------------------------------------- out=


def test_out_receives_records_and_slice_is_returned(impl):
    ar = impl.ArrayRing(RECORD, 8)
    ar.put_many(records(0, 5))
    out = np.zeros(3, RECORD)
    got = ar.get_many(10, out=out)
    assert got.shape == (3,)  # bounded by len(out)
    assert np.shares_memory(got, out)
    np.testing.assert_array_equal(out, records(0, 3))
    got = ar.get_many(10, out=out)
    assert got.shape == (2,)
    np.testing.assert_array_equal(got, records(3, 5))
    np.testing.assert_array_equal(out[:2], records(3, 5))
    assert len(ar) == 0
    assert ar.get_many(10, out=out).shape == (0,)


def test_out_bounded_by_max_records(impl):
    ar = impl.ArrayRing("f4", 8)
    ar.put_many(np.arange(6, dtype="f4"))
    out = np.full(6, -1, "f4")
    got = ar.get_many(2, out=out)
    np.testing.assert_array_equal(got, [0, 1])
    np.testing.assert_array_equal(out, [0, 1, -1, -1, -1, -1])
    assert len(ar) == 4


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.zeros(4, "f4"), id="wrong-dtype"),
        pytest.param(np.zeros((2, 2), "f8"), id="2-d"),
        pytest.param(np.zeros((), "f8"), id="0-d"),
        pytest.param([0.0, 0.0], id="list"),
        pytest.param(memoryview(bytearray(32)), id="memoryview"),
    ],
)
def test_out_of_wrong_kind_is_a_type_error(impl, bad):
    ar = impl.ArrayRing("f8", 4)
    ar.put_many(np.arange(3.0))
    with pytest.raises(TypeError, match="out must be"):
        ar.get_many(2, out=bad)
    assert len(ar) == 3  # nothing was taken


def test_out_must_be_contiguous(impl):
    ar = impl.ArrayRing("f8", 4)
    ar.put_many(np.arange(3.0))
    with pytest.raises(ValueError, match="C-contiguous"):
        ar.get_many(2, out=np.zeros(8)[::2])
    assert len(ar) == 3


def test_read_only_out_is_refused_and_nothing_is_lost(impl):
    ar = impl.ArrayRing("f8", 4)
    ar.put_many(np.arange(3.0))
    out = np.zeros(3)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        ar.get_many(2, out=out)
    np.testing.assert_array_equal(ar.get_many(5), [0.0, 1.0, 2.0])


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("dtype", [object, "O", [("a", "i4"), ("b", "O")]], ids=["object", "O", "field-O"])
def test_object_dtype_is_refused(impl, dtype):
    with pytest.raises(TypeError, match="plain data"):
        impl.ArrayRing(dtype, 4)


def test_sub_array_dtype_is_refused(impl):
    with pytest.raises(ValueError, match="sub-array"):
        impl.ArrayRing("(3,)f8", 4)


def test_zero_size_dtype_is_refused(impl):
    with pytest.raises(ValueError, match="non-zero size"):
        impl.ArrayRing(np.dtype([]), 4)


def test_nonsense_dtype_is_a_type_error(impl):
    with pytest.raises(TypeError, match="dtype"):
        impl.ArrayRing("not-a-dtype", 4)


@pytest.mark.parametrize("bad", [0, -3])
def test_capacity_below_one_is_refused(impl, bad):
    with pytest.raises(ValueError, match="capacity"):
        impl.ArrayRing("f8", bad)


@pytest.mark.parametrize("bad", [2.0, "4", None])
def test_capacity_must_be_an_int(impl, bad):
    with pytest.raises(TypeError, match="capacity"):
        impl.ArrayRing("f8", bad)


def test_put_many_needs_an_ndarray(impl):
    ar = impl.ArrayRing("f8", 4)
    for bad in ([1.0, 2.0], (1.0,), np.float64(1.0), b"\0" * 8, None):
        with pytest.raises(TypeError, match="numpy.ndarray"):
            ar.put_many(bad)
    assert len(ar) == 0


@pytest.mark.parametrize("other", ["f4", ">f8", "i8", "V8", [("x", "f8")]], ids=str)
def test_put_many_refuses_another_dtype(impl, other):
    ar = impl.ArrayRing("<f8", 4)
    with pytest.raises(TypeError, match="dtype"):
        ar.put_many(np.zeros(2, other))
    assert len(ar) == 0


@pytest.mark.parametrize("shape", [(), (2, 2), (1, 3), (2, 1, 1)], ids=str)
def test_put_many_refuses_other_shapes(impl, shape):
    ar = impl.ArrayRing("f8", 10)
    with pytest.raises(ValueError, match="1-d"):
        ar.put_many(np.zeros(shape))
    assert len(ar) == 0


def test_get_many_checks_max_records(impl):
    ar = impl.ArrayRing("f8", 4)
    with pytest.raises(TypeError, match="max_records"):
        ar.get_many(1.5)
    with pytest.raises(ValueError, match="max_records"):
        ar.get_many(-1)
    with pytest.raises(OverflowError, match="max_records"):
        ar.get_many(2**64)
    assert ar.get_many(np.int64(2)).shape == (0,)


# --------------------------------------------------------------------------- close / introspection


def test_close_refuses_puts_and_drains(impl):
    ar = impl.ArrayRing("i4", 4)
    ar.put_many(np.arange(3, dtype="i4"))
    ar.close()
    assert ar.closed
    with pytest.raises(Closed):
        ar.put_many(np.arange(1, dtype="i4"))
    with pytest.raises(Closed):
        ar.put_many([1])  # closed is reported before the type check, as put_many on Ring
    np.testing.assert_array_equal(ar.get_many(2), [0, 1])
    np.testing.assert_array_equal(ar.get_many(2, out=np.zeros(2, "i4")), [2])
    with pytest.raises(Closed):
        ar.get_many(2)
    with pytest.raises(Closed):
        ar.get_many(0, out=np.zeros(2, "i4"))
    ar.close()
    assert ar.closed


def test_clear(impl):
    ar = impl.ArrayRing("i4", 4)
    assert ar.clear() == 0
    ar.put_many(np.arange(3, dtype="i4"))
    ar.get_many(1)
    assert ar.clear() == 2
    assert len(ar) == 0
    assert ar.put_many(np.arange(10, 20, dtype="i4")) == 4
    np.testing.assert_array_equal(ar.get_many(9), [10, 11, 12, 13])


def test_len_statistics_repr(impl):
    ar = impl.ArrayRing("f8", 5)
    ar.put_many(np.arange(2.0))
    assert len(ar) == 2
    s = ar.statistics()
    assert isinstance(s, ringbus.QueueStatistics)
    assert (s.size, s.capacity, s.getters_waiting, s.putters_waiting, s.closed) == (2, 5, 0, 0, False)
    assert repr(ar) == "<ringbus.ArrayRing dtype=float64 size=2 capacity=5>"
    ar.close()
    assert ar.statistics().closed
    assert repr(ar) == "<ringbus.ArrayRing dtype=float64 size=2 capacity=5 closed>"


def test_read_only_properties(impl):
    ar = impl.ArrayRing("f8", 5)
    for name, value in (("capacity", 9), ("dtype", np.dtype("i1")), ("closed", True)):
        with pytest.raises(AttributeError):
            setattr(ar, name, value)
    assert ar.capacity == 5 and ar.dtype == np.dtype("f8") and not ar.closed


def test_keyword_arguments(impl):
    ar = impl.ArrayRing(dtype="f8", capacity=3)
    assert ar.put_many(records=np.ones(2)) == 2
    np.testing.assert_array_equal(ar.get_many(max_records=5, out=None), [1.0, 1.0])


def test_threads_move_every_record_once(impl, threads):
    """ArrayRing never blocks; producers retry on a full ring, consumers on an empty one."""
    ar = impl.ArrayRing("i8", 64)
    per_producer, producers = 20_000, 2
    total = per_producer * producers
    done = []

    def producer(k):
        data = np.arange(k * per_producer, (k + 1) * per_producer, dtype="i8")
        sent = 0
        while sent < len(data):
            n = ar.put_many(data[sent : sent + 37])
            sent += n
            if not n:
                threads_yield()
        done.append(k)

    def consumer():
        seen = np.zeros(total, np.int64)
        while True:
            try:
                got = ar.get_many(50)
            except Closed:
                return seen
            np.add.at(seen, got, 1)
            if not len(got):
                threads_yield()

    for k in range(producers):
        threads.start(producer, k, name=f"p{k}")
    for k in range(2):
        threads.start(consumer, name=f"c{k}")

    def closer():
        while len(done) < producers:
            threads_yield()
        ar.close()

    threads.start(closer, name="closer")
    results = threads.join()
    seen = results["c0"] + results["c1"]
    assert (seen == 1).all(), f"lost {(seen == 0).sum()}, duplicated {(seen > 1).sum()}"
