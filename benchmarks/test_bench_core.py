"""pytest-benchmark: the core queues beside their peers, grouped per case.

Run with ``python -m pytest benchmarks/ --benchmark-group-by=group`` (the
normal test run collects only tests/). Compare within a group: same work,
same run.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import queue
import random
from typing import Any, Callable

import numpy as np
import pytest

import ringbus

N = 10_000


def fifo_pair(kind: str) -> tuple[Callable[[Any], None], Callable[[], Any]]:
    if kind == "deque":
        d: Any = collections.deque()
        return d.append, d.popleft
    q: Any = {"ring": lambda: ringbus.Ring(1024), "simplequeue": queue.SimpleQueue, "queue": queue.Queue}[kind]()
    return q.put, q.get


@pytest.mark.benchmark(group="fifo put+get x10,000")
@pytest.mark.parametrize("kind", ["ring", "deque", "simplequeue", "queue"])
def test_fifo(benchmark: Any, kind: str) -> None:
    put, get = fifo_pair(kind)

    def run() -> None:
        for _ in itertools.repeat(None, N):
            put(1)
            get()

    benchmark(run)


@pytest.mark.benchmark(group="batch of 1,000")
@pytest.mark.parametrize("kind", ["ring put_many/get_many", "deque per item"])
def test_batch(benchmark: Any, kind: str) -> None:
    batch = list(range(1000))
    if kind.startswith("ring"):
        r = ringbus.Ring(1000)
        benchmark(lambda: (r.put_many(batch), r.get_many(1000)))
    else:
        d: Any = collections.deque()

        def run() -> None:
            for x in batch:
                d.append(x)
            for _ in range(1000):
                d.popleft()

        benchmark(run)


@pytest.mark.benchmark(group="priority put+get x10,000, 1,000 resident")
@pytest.mark.parametrize("kind", ["ringbus.PriorityQueue", "heapq", "queue.PriorityQueue"])
def test_priority(benchmark: Any, kind: str) -> None:
    rng = random.Random(1)
    prios = [rng.randrange(10) for _ in range(N)]
    seq = itertools.count()
    if kind == "ringbus.PriorityQueue":
        pq: Any = ringbus.PriorityQueue()
        for i in range(1000):
            pq.put(i, rng.randrange(10))

        def run() -> None:
            for p in prios:
                pq.put(1, p)
                pq.get()

    elif kind == "heapq":
        h: list[tuple[int, int, int]] = []
        for i in range(1000):
            heapq.heappush(h, (-rng.randrange(10), next(seq), i))

        def run() -> None:
            for p in prios:
                heapq.heappush(h, (-p, next(seq), 1))
                heapq.heappop(h)

    else:
        q: Any = queue.PriorityQueue()
        for i in range(1000):
            q.put((-rng.randrange(10), next(seq), i))

        def run() -> None:
            for p in prios:
                q.put((-p, next(seq), 1))
                q.get()

    benchmark(run)


@pytest.mark.benchmark(group="float64 run of 100,000")
@pytest.mark.parametrize("kind", ["ArrayRing put_many+get_many", "numpy.copyto"])
def test_array_run(benchmark: Any, kind: str) -> None:
    run = np.arange(100_000, dtype=np.float64)
    out = np.empty_like(run)
    if kind == "numpy.copyto":
        benchmark(np.copyto, out, run)
    else:
        ring = ringbus.ArrayRing(np.float64, 100_000)
        benchmark(lambda: (ring.put_many(run), ring.get_many(100_000, out)))
