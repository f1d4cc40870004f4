"""``ringbus bench core``: the in-process queues against deque, queue, heapq and numpy.copyto."""

from __future__ import annotations

import collections
import heapq
import itertools
import queue
import random
import threading
from itertools import repeat
from typing import Any

import numpy as np

from ringbus._core import ArrayRing, PriorityQueue, Ring
from ringbus.bench._harness import Case, timed

BATCH = 1_000
RESIDENT = 1_000
ARRAY_RUN = 100_000


def _fifo_case(n: int) -> Case:
    def ring(n: int) -> float:
        r: Any = Ring(1024)
        put, get = r.put, r.get

        def body() -> None:
            for _ in repeat(None, n):
                put(1)
                get()

        return timed(body)

    def deque(n: int) -> float:
        d: Any = collections.deque()
        append, popleft = d.append, d.popleft

        def body() -> None:
            for _ in repeat(None, n):
                append(1)
                popleft()

        return timed(body)

    def simple_queue(n: int) -> float:
        q: Any = queue.SimpleQueue()
        put, get = q.put, q.get

        def body() -> None:
            for _ in repeat(None, n):
                put(1)
                get()

        return timed(body)

    def queue_queue(n: int) -> float:
        q: Any = queue.Queue()
        put, get = q.put, q.get

        def body() -> None:
            for _ in repeat(None, n // 10):
                put(1)
                get()

        return timed(body) * 10  # queue.Queue is ~30x slower: time a tenth, scale

    return Case(
        "fifo, one thread",
        "put+get",
        n,
        ("ringbus.Ring", ring),
        [("collections.deque", deque), ("queue.SimpleQueue", simple_queue), ("queue.Queue", queue_queue)],
        target={"collections.deque": 1.0, "queue.Queue": 10.0},
    )


def _batch_case(n: int) -> Case:
    batch = list(range(BATCH))
    loops = max(1, n // BATCH)

    def ring(n: int) -> float:
        r: Any = Ring(BATCH)
        put_many, get_many = r.put_many, r.get_many

        def body() -> None:
            for _ in repeat(None, loops):
                put_many(batch)
                get_many(BATCH)

        return timed(body)

    def deque_per_item(n: int) -> float:
        d: Any = collections.deque()
        append, popleft = d.append, d.popleft

        def body() -> None:
            for _ in repeat(None, loops):
                for x in batch:
                    append(x)
                for _ in repeat(None, BATCH):
                    popleft()

        return timed(body)

    def deque_extend(n: int) -> float:
        d: Any = collections.deque()
        extend, popleft = d.extend, d.popleft

        def body() -> None:
            for _ in repeat(None, loops):
                extend(batch)
                [popleft() for _ in repeat(None, BATCH)]

        return timed(body)

    return Case(
        f"fifo, batches of {BATCH:,}",
        "item (put_many+get_many)",
        loops * BATCH,
        ("ringbus.Ring put_many/get_many", ring),
        [("deque append+popleft", deque_per_item), ("deque extend+popleft", deque_extend)],
        target={"deque append+popleft": 3.0},
    )


def _priority_case(n: int, seed: int) -> Case:
    rng = random.Random(seed)
    priorities = [rng.randrange(10) for _ in range(n)]
    start = [rng.randrange(10) for _ in range(RESIDENT)]

    def ring(n: int) -> float:
        q: Any = PriorityQueue()
        for p in start:
            q.put(0, p)
        put, get = q.put, q.get
        prios = priorities[:n]

        def body() -> None:
            for p in prios:
                put(1, p)
                get()

        return timed(body)

    def heapq_tuples(n: int) -> float:
        h: list[tuple[int, int, int]] = []
        seq = itertools.count()
        for p in start:
            heapq.heappush(h, (-p, next(seq), 0))
        push, pop = heapq.heappush, heapq.heappop
        prios = priorities[:n]

        def body() -> None:
            for p in prios:
                push(h, (-p, next(seq), 1))
                pop(h)

        return timed(body)

    def queue_priority(n: int) -> float:
        q: Any = queue.PriorityQueue()
        seq = itertools.count()
        for p in start:
            q.put((-p, next(seq), 0))
        put, get = q.put, q.get
        prios = priorities[: n // 10]

        def body() -> None:
            for p in prios:
                put((-p, next(seq), 1))
                get()

        return timed(body) * 10

    return Case(
        f"priority 0..9, {RESIDENT:,} resident",
        "put+get",
        n,
        ("ringbus.PriorityQueue", ring),
        [("heapq (prio, seq, item)", heapq_tuples), ("queue.PriorityQueue", queue_priority)],
        target={"heapq (prio, seq, item)": 2.0, "queue.PriorityQueue": 10.0},
    )


def _priority_fill_case(n: int, seed: int) -> Case:
    rng = random.Random(seed + 1)
    priorities = [rng.randrange(10) for _ in range(n)]

    def ring(n: int) -> float:
        q: Any = PriorityQueue()
        put, get = q.put, q.get
        prios = priorities[:n]

        def body() -> None:
            for p in prios:
                put(1, p)
            for _ in repeat(None, n):
                get()

        return timed(body)

    def heapq_tuples(n: int) -> float:
        h: list[tuple[int, int, int]] = []
        seq = itertools.count()
        push, pop = heapq.heappush, heapq.heappop
        prios = priorities[:n]

        def body() -> None:
            for p in prios:
                push(h, (-p, next(seq), 1))
            for _ in repeat(None, n):
                pop(h)

        return timed(body)

    return Case(
        f"priority 0..9, fill to {n:,} then drain",
        "put+get",
        n,
        ("ringbus.PriorityQueue", ring),
        [("heapq (prio, seq, item)", heapq_tuples)],
        target={"heapq (prio, seq, item)": 2.0},
    )


def _two_thread_run(n: int, put: Any, get: Any) -> float:
    def produce() -> None:
        for _ in repeat(None, n):
            put(1)

    def body() -> None:
        producer = threading.Thread(target=produce)
        producer.start()
        for _ in repeat(None, n):
            get()
        producer.join()

    return timed(body)


def _threads_case(n: int) -> Case:
    def ring(n: int) -> float:
        r: Any = Ring(8192)
        return _two_thread_run(n, r.put, r.get)

    def queue_queue(n: int) -> float:
        q: Any = queue.Queue()
        return _two_thread_run(n, q.put, q.get)

    def simple_queue(n: int) -> float:
        q: Any = queue.SimpleQueue()
        return _two_thread_run(n, q.put, q.get)

    return Case(
        "producer thread -> consumer thread",
        "item",
        n,
        ("ringbus.Ring(8192)", ring),
        [("queue.Queue", queue_queue), ("queue.SimpleQueue", simple_queue)],
        target={"queue.Queue": 5.0},
    )


def _array_case(n: int) -> Case:
    run = np.arange(ARRAY_RUN, dtype=np.float64)
    loops = max(1, n)

    def ring(n: int) -> float:
        r = ArrayRing(np.float64, ARRAY_RUN)
        out = np.empty(ARRAY_RUN, np.float64)
        put_many, get_many = r.put_many, r.get_many

        def body() -> None:
            for _ in repeat(None, n):
                put_many(run)
                get_many(ARRAY_RUN, out)

        return timed(body)

    def ring_alloc(n: int) -> float:
        r = ArrayRing(np.float64, ARRAY_RUN)
        put_many, get_many = r.put_many, r.get_many

        def body() -> None:
            for _ in repeat(None, n):
                put_many(run)
                get_many(ARRAY_RUN)

        return timed(body)

    def copyto(n: int) -> float:
        dst = np.empty(ARRAY_RUN, np.float64)
        copy = np.copyto

        def body() -> None:
            for _ in repeat(None, n):
                copy(dst, run)

        return timed(body)

    return Case(
        f"ArrayRing, float64 runs of {ARRAY_RUN:,}",
        "run (put_many+get_many)",
        loops,
        ("ringbus.ArrayRing (get_many out=)", ring),
        [("numpy.copyto, one copy", copyto), ("ringbus.ArrayRing (new array)", ring_alloc)],
        target={"numpy.copyto, one copy": 0.5},
        bytes_per_op=ARRAY_RUN * 8,
    )


def cases(scale: float = 1.0, seed: int = 12345) -> list[Case]:
    """The core comparisons; scale < 1 shortens every case (a smoke run), > 1 lengthens it."""

    def n(base: int) -> int:
        return max(1, int(base * scale))

    return [
        _fifo_case(n(1_000_000)),
        _batch_case(n(2_000_000)),
        _priority_case(n(500_000), seed),
        _priority_fill_case(n(200_000), seed),
        _threads_case(n(500_000)),
        _array_case(n(2_000)),
    ]
