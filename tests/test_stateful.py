"""Hypothesis state machines: Ring against collections.deque, PriorityQueue against a sorted list,
ArrayRing against a deque of values, each on c and py; and c against py call for call."""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ringbus import Closed, Empty, Full

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# the queues only move references: any object will do, and identity must survive
items = st.integers() | st.text(max_size=3) | st.none() | st.builds(object) | st.tuples(st.integers())
priorities = st.integers(-3, 3) | st.sampled_from([INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1])

class LazySequence(Sequence):
    """A sequence that is neither list nor tuple: put_many must read it item by item."""

    def __init__(self, items):
        self._items = list(items)

    def __len__(self):
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]


containers = st.sampled_from([list, tuple, LazySequence])

STATEFUL_SETTINGS = settings(stateful_step_count=30)  # examples: the profile in conftest.py


def run(machine_base, impl):
    machine = type(f"{machine_base.__name__}_{impl.name}", (machine_base,), {"impl": impl})
    run_state_machine_as_test(machine, settings=STATEFUL_SETTINGS)


# --------------------------------------------------------------------------- Ring vs deque


class RingMachine(RuleBasedStateMachine):
    impl = None  # set per implementation by run()

    def __init__(self):
        super().__init__()
        self.q = None

    @initialize(capacity=st.integers(1, 9))
    def create(self, capacity):
        self.q = self.impl.Ring(capacity)
        self.capacity = capacity
        self.model: deque = deque()
        self.closed = False

    def room(self):
        return self.capacity - len(self.model)

    @rule(item=items, how=st.sampled_from(["put_nowait", "no-block", "timeout-0", "block"]))
    def put(self, item, how):
        if how == "block" and not self.closed and self.room() == 0:
            return  # would wait forever in one thread; blocking is covered by the thread tests
        call = {
            "put_nowait": lambda: self.q.put_nowait(item),
            "no-block": lambda: self.q.put(item, block=False),
            "timeout-0": lambda: self.q.put(item, timeout=0),
            "block": lambda: self.q.put(item),
        }[how]
        if self.closed:
            with pytest.raises(Closed):
                call()
        elif self.room() == 0:
            with pytest.raises(Full):
                call()
        else:
            call()
            self.model.append(item)

    @rule(how=st.sampled_from(["get_nowait", "no-block", "timeout-0", "block"]))
    def get(self, how):
        if how == "block" and not self.closed and not self.model:
            return
        call = {
            "get_nowait": self.q.get_nowait,
            "no-block": lambda: self.q.get(block=False),
            "timeout-0": lambda: self.q.get(timeout=0),
            "block": self.q.get,
        }[how]
        if self.model:
            assert call() is self.model.popleft()
        elif self.closed:
            with pytest.raises(Closed):
                call()
        else:
            with pytest.raises(Empty):
                call()

    @rule(batch=st.lists(items, max_size=12), kind=containers)
    def put_many(self, batch, kind):
        if self.closed:
            with pytest.raises(Closed):
                self.q.put_many(kind(batch))
            return
        n = self.q.put_many(kind(batch))
        assert n == min(len(batch), self.room())
        self.model.extend(batch[:n])

    @rule(n=st.integers(0, 12))
    def get_many(self, n):
        if self.closed and not self.model:
            with pytest.raises(Closed):
                self.q.get_many(n)
            return
        got = self.q.get_many(n)
        expected = [self.model.popleft() for _ in range(min(n, len(self.model)))]
        assert len(got) == len(expected)
        assert all(a is b for a, b in zip(got, expected, strict=True))

    @rule()
    def clear(self):
        assert self.q.clear() == len(self.model)
        self.model.clear()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self):
        self.q.close()
        self.closed = True

    @invariant()
    def agrees(self):
        if self.q is None:
            return
        n = len(self.model)
        assert len(self.q) == self.q.qsize() == n
        assert self.q.empty() == (n == 0)
        assert self.q.full() == (n == self.capacity)
        assert self.q.closed == self.closed
        assert self.q.capacity == self.capacity
        s = self.q.statistics()
        assert (s.size, s.capacity, s.closed, s.getters_waiting, s.putters_waiting) == (
            n,
            self.capacity,
            self.closed,
            0,
            0,
        )


def test_ring_behaves_like_a_bounded_deque(impl):
    run(RingMachine, impl)


# --------------------------------------------------------------------------- PriorityQueue vs sorted list


class PriorityQueueMachine(RuleBasedStateMachine):
    impl = None

    def __init__(self):
        super().__init__()
        self.q = None

    @initialize(capacity=st.none() | st.integers(1, 9))
    def create(self, capacity):
        self.q = self.impl.PriorityQueue(capacity)
        self.capacity = capacity
        # entries (-priority, seq, item): ascending order is the order get() must follow
        self.model: list = []
        self.seq = itertools.count()
        self.closed = False

    def has_room(self, n=1):
        return self.capacity is None or len(self.model) + n <= self.capacity

    def room(self):
        return float("inf") if self.capacity is None else self.capacity - len(self.model)

    def push(self, item, priority):
        bisect.insort(self.model, (-priority, next(self.seq), item), key=lambda e: e[:2])

    @rule(item=items, priority=priorities, how=st.sampled_from(["put_nowait", "no-block", "timeout-0", "block"]))
    def put(self, item, priority, how):
        if how == "block" and not self.closed and not self.has_room():
            return
        call = {
            "put_nowait": lambda: self.q.put_nowait(item, priority),
            "no-block": lambda: self.q.put(item, priority, block=False),
            "timeout-0": lambda: self.q.put(item, priority=priority, timeout=0),
            "block": lambda: self.q.put(item, priority),
        }[how]
        if self.closed:
            with pytest.raises(Closed):
                call()
        elif not self.has_room():
            with pytest.raises(Full):
                call()
        else:
            call()
            self.push(item, priority)

    @rule(item=items)
    def put_default_priority(self, item):
        if self.closed:
            with pytest.raises(Closed):
                self.q.put_nowait(item)
        elif not self.has_room():
            with pytest.raises(Full):
                self.q.put_nowait(item)
        else:
            self.q.put_nowait(item)
            self.push(item, 0)

    @rule(how=st.sampled_from(["get_nowait", "no-block", "timeout-0", "block"]))
    def get(self, how):
        if how == "block" and not self.closed and not self.model:
            return
        call = {
            "get_nowait": self.q.get_nowait,
            "no-block": lambda: self.q.get(False),
            "timeout-0": lambda: self.q.get(timeout=0),
            "block": self.q.get,
        }[how]
        if self.model:
            assert call() is self.model.pop(0)[2]
        elif self.closed:
            with pytest.raises(Closed):
                call()
        else:
            with pytest.raises(Empty):
                call()

    @rule(batch=st.lists(items, max_size=12), priority=priorities, kind=containers)
    def put_many(self, batch, priority, kind):
        if self.closed:
            with pytest.raises(Closed):
                self.q.put_many(kind(batch), priority)
            return
        n = self.q.put_many(kind(batch), priority)
        assert n == min(len(batch), self.room())
        for item in batch[:n]:
            self.push(item, priority)

    @rule(n=st.integers(0, 12))
    def get_many(self, n):
        if self.closed and not self.model:
            with pytest.raises(Closed):
                self.q.get_many(n)
            return
        got = self.q.get_many(n)
        expected = [entry[2] for entry in self.model[:n]]
        del self.model[:n]
        assert len(got) == len(expected)
        assert all(a is b for a, b in zip(got, expected, strict=True))

    @rule()
    def clear(self):
        assert self.q.clear() == len(self.model)
        self.model.clear()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self):
        self.q.close()
        self.closed = True

    @invariant()
    def agrees(self):
        if self.q is None:
            return
        n = len(self.model)
        assert len(self.q) == self.q.qsize() == n
        assert self.q.empty() == (n == 0)
        assert self.q.full() == (self.capacity is not None and n == self.capacity)
        assert self.q.closed == self.closed
        assert self.q.capacity == self.capacity
        s = self.q.statistics()
        assert (s.size, s.capacity, s.closed) == (n, self.capacity, self.closed)


def test_priority_queue_behaves_like_a_sorted_list(impl):
    run(PriorityQueueMachine, impl)


# --------------------------------------------------------------------------- ArrayRing vs deque


class ArrayRingMachine(RuleBasedStateMachine):
    impl = None

    def __init__(self):
        super().__init__()
        self.ar = None
        self.counter = itertools.count()

    @initialize(capacity=st.integers(1, 9))
    def create(self, capacity):
        self.ar = self.impl.ArrayRing("i8", capacity)
        self.capacity = capacity
        self.model: deque = deque()
        self.closed = False

    @rule(n=st.integers(0, 12), step=st.sampled_from([1, 2]))
    def put_many(self, n, step):
        values = np.array([next(self.counter) for _ in range(n * step)], dtype="i8")[::step]
        if self.closed:
            with pytest.raises(Closed):
                self.ar.put_many(values)
            return
        taken = self.ar.put_many(values)
        assert taken == min(n, self.capacity - len(self.model))
        self.model.extend(values[:taken].tolist())

    @rule(n=st.integers(0, 12), out_len=st.none() | st.integers(0, 12))
    def get_many(self, n, out_len):
        out = None if out_len is None else np.full(out_len, -1, "i8")
        if self.closed and not self.model:
            with pytest.raises(Closed):
                self.ar.get_many(n, out=out)
            return
        got = self.ar.get_many(n, out=out)
        k = min(n, len(self.model), out_len if out_len is not None else n)
        assert got.dtype == np.dtype("i8")
        assert got.tolist() == [self.model.popleft() for _ in range(k)]
        if out is not None:
            assert np.shares_memory(got, out) or k == 0
            assert (out[k:] == -1).all()

    @rule()
    def clear(self):
        assert self.ar.clear() == len(self.model)
        self.model.clear()

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self):
        self.ar.close()
        self.closed = True

    @invariant()
    def agrees(self):
        if self.ar is None:
            return
        assert len(self.ar) == len(self.model)
        assert self.ar.closed == self.closed
        s = self.ar.statistics()
        assert (s.size, s.capacity, s.closed) == (len(self.model), self.capacity, self.closed)


def test_array_ring_behaves_like_a_deque(impl):
    run(ArrayRingMachine, impl)


# --------------------------------------------------------------------------- c against py, call for call

AR_DTYPE = np.dtype("<i8")


def _normalise(result):
    got, raw = result
    return ("ndarray", got.dtype, got.shape, got.tobytes()), raw


counts = st.integers(-2, 12) | st.sampled_from([2**64, 1.5, "3", None])
timeouts = st.sampled_from([None, 0, 0.0, -1, float("nan"), "1", True])
odd_priorities = priorities | st.sampled_from([2**63, -(2**63) - 1, 1.0, "2", None])


class TwinMachine(RuleBasedStateMachine):
    """The twin is the reference model: the same calls, with good and bad arguments, must
    return the same values or raise the same exception with the same message."""

    c = py = None  # set by the test

    def __init__(self):
        super().__init__()
        self.pairs = None
        self.counter = 0

    @initialize(capacity=st.integers(1, 6), pq_capacity=st.none() | st.integers(1, 6), ar_capacity=st.integers(1, 6))
    def create(self, capacity, pq_capacity, ar_capacity):
        self.pairs = {
            "ring": (self.c.Ring(capacity), self.py.Ring(capacity)),
            "pq": (self.c.PriorityQueue(pq_capacity), self.py.PriorityQueue(pq_capacity)),
            "ar": (self.c.ArrayRing(AR_DTYPE, ar_capacity), self.py.ArrayRing(AR_DTYPE, ar_capacity)),
        }

    def same(self, which, call):
        outcomes = []
        for q in self.pairs[which]:
            try:
                result = call(q)
            except Exception as exc:  # noqa: BLE001 - compared below
                outcomes.append((type(exc), str(exc)))
            else:
                if isinstance(result, np.ndarray):  # compare arrays by dtype, shape and bytes
                    result = ("ndarray", result.dtype, result.shape, result.tobytes())
                outcomes.append(("ok", result))
        assert outcomes[0] == outcomes[1], outcomes

    @rule(which=st.sampled_from(["ring", "pq"]), item=st.integers(), timeout=timeouts, block=st.booleans())
    def put(self, which, item, timeout, block):
        # the twin would wait forever where the ring is full and no timeout is given
        if block and timeout is None:
            timeout = 0
        self.same(which, lambda q: q.put(item, block=block, timeout=timeout))

    @rule(item=st.integers(), priority=odd_priorities, timeout=timeouts)
    def pq_put(self, item, priority, timeout):
        if timeout is None:
            timeout = 0
        self.same("pq", lambda q: q.put(item, priority, timeout=timeout))

    @rule(which=st.sampled_from(["ring", "pq"]), timeout=timeouts, block=st.booleans())
    def get(self, which, timeout, block):
        if block and timeout is None:
            timeout = 0
        self.same(which, lambda q: q.get(block, timeout))

    @rule(
        which=st.sampled_from(["ring", "pq"]),
        batch=st.lists(st.integers(), max_size=8)
        | st.builds(range, st.integers(0, 20))  # huge ranges: only where bounded, in test_ring / test_priority_queue
        | st.text(max_size=8)
        | st.sampled_from([None, 5, {1}, {1: 2}]),
    )
    def put_many(self, which, batch):
        self.same(which, lambda q: q.put_many(batch))

    @rule(batch=st.lists(st.integers(), max_size=8), priority=odd_priorities)
    def pq_put_many(self, batch, priority):
        self.same("pq", lambda q: q.put_many(batch, priority))

    @rule(which=st.sampled_from(["ring", "pq"]), n=counts)
    def get_many(self, which, n):
        self.same(which, lambda q: q.get_many(n))

    @rule(which=st.sampled_from(["ring", "pq"]), method=st.sampled_from(["clear", "close", "qsize", "empty", "full"]))
    def simple(self, which, method):
        self.same(which, lambda q: getattr(q, method)())

    @rule(
        n=st.integers(0, 8),
        dtype=st.sampled_from([AR_DTYPE, np.dtype("<i8"), np.dtype(">i4")]),
        layout=st.sampled_from(["contiguous", "strided", "reversed", "2-d", "list"]),
    )
    def ar_put_many(self, n, dtype, layout):
        data = np.arange(self.counter, self.counter + 2 * n).astype(dtype)
        self.counter += 2 * n
        records = {
            "contiguous": data[:n],
            "strided": data[::2],
            "reversed": data[::-1][:n],
            "2-d": data.reshape(-1, 2) if n else data.reshape(0, 2),
            "list": data[:n].tolist(),
        }[layout]
        self.same("ar", lambda ar: ar.put_many(records))

    @rule(
        n=counts,
        out=st.sampled_from(["none", "exact", "short", "long", "strided", "wrong-dtype", "2-d", "list"]),
    )
    def ar_get_many(self, n, out):
        def call(ar):
            target = {
                "none": None,
                "exact": np.zeros(n if isinstance(n, int) and 0 <= n < 2**20 else 0, AR_DTYPE),
                "short": np.zeros(1, AR_DTYPE),
                "long": np.zeros(10, AR_DTYPE),
                "strided": np.zeros(10, AR_DTYPE)[::2],
                "wrong-dtype": np.zeros(4, "f8"),
                "2-d": np.zeros((2, 2), AR_DTYPE),
                "list": [0, 0],
            }[out]
            got = ar.get_many(n, out=target)
            if target is not None:  # the records land in the first slots of out
                return got, bytes(target) if isinstance(target, np.ndarray) and target.flags.c_contiguous else None
            return got

        if out == "exact" or out == "short" or out == "long":
            self.same("ar", lambda ar: _normalise(call(ar)))
        else:
            self.same("ar", call)

    @rule(method=st.sampled_from(["clear", "close"]))
    def ar_simple(self, method):
        self.same("ar", lambda ar: getattr(ar, method)())

    @invariant()
    def agrees(self):
        if self.pairs is None:
            return
        for c, py in self.pairs.values():
            assert c.statistics() == py.statistics()
            assert repr(c) == repr(py)
            assert len(c) == len(py)


def test_native_core_matches_its_twin(c_and_py):
    c, py = c_and_py
    machine = type("TwinMachine_c_py", (TwinMachine,), {"c": c, "py": py})
    run_state_machine_as_test(machine, settings=settings(stateful_step_count=40))
