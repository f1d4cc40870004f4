"""asv: the in-process queues and their peers, timed per operation (history across commits)."""

import collections
import heapq
import itertools
import queue
import random

import numpy as np

import ringbus

N = 10_000


class FifoPutGet:
    """One put + one get of a small int, repeated N times."""

    params = ["ringbus.Ring", "collections.deque", "queue.SimpleQueue", "queue.Queue"]
    param_names = ["queue"]

    def setup(self, kind):
        if kind == "ringbus.Ring":
            q = ringbus.Ring(1024)
            self.put, self.get = q.put, q.get
        elif kind == "collections.deque":
            q = collections.deque()
            self.put, self.get = q.append, q.popleft
        elif kind == "queue.SimpleQueue":
            q = queue.SimpleQueue()
            self.put, self.get = q.put, q.get
        else:
            q = queue.Queue()
            self.put, self.get = q.put, q.get

    def time_put_get(self, kind):
        put, get = self.put, self.get
        for _ in itertools.repeat(None, N):
            put(1)
            get()


class FifoBatch:
    """put_many/get_many of 1,000 items against per-item deque calls."""

    params = ["ringbus.Ring", "collections.deque"]
    param_names = ["queue"]

    def setup(self, kind):
        self.batch = list(range(1000))
        self.q = ringbus.Ring(1000) if kind == "ringbus.Ring" else collections.deque()

    def time_batch_of_1000(self, kind):
        q, batch = self.q, self.batch
        if kind == "ringbus.Ring":
            q.put_many(batch)
            q.get_many(1000)
        else:
            for x in batch:
                q.append(x)
            for _ in range(1000):
                q.popleft()


class PriorityPutGet:
    """put + get with random priorities 0..9 and 1,000 items resident."""

    params = ["ringbus.PriorityQueue", "heapq", "queue.PriorityQueue"]
    param_names = ["queue"]

    def setup(self, kind):
        rng = random.Random(1)
        self.prios = [rng.randrange(10) for _ in range(N)]
        self.seq = itertools.count()
        if kind == "ringbus.PriorityQueue":
            self.q = ringbus.PriorityQueue()
            for i in range(1000):
                self.q.put(i, rng.randrange(10))
        elif kind == "heapq":
            self.q = []
            for i in range(1000):
                heapq.heappush(self.q, (-rng.randrange(10), next(self.seq), i))
        else:
            self.q = queue.PriorityQueue()
            for i in range(1000):
                self.q.put((-rng.randrange(10), next(self.seq), i))

    def time_put_get(self, kind):
        q, seq = self.q, self.seq
        if kind == "ringbus.PriorityQueue":
            for p in self.prios:
                q.put(1, p)
                q.get()
        elif kind == "heapq":
            push, pop = heapq.heappush, heapq.heappop
            for p in self.prios:
                push(q, (-p, next(seq), 1))
                pop(q)
        else:
            for p in self.prios:
                q.put((-p, next(seq), 1))
                q.get()


class ArrayRun:
    """float64 runs of 100,000 through an ArrayRing against one numpy.copyto."""

    params = ["ringbus.ArrayRing", "numpy.copyto"]
    param_names = ["mover"]

    def setup(self, kind):
        self.run = np.arange(100_000, dtype=np.float64)
        self.out = np.empty_like(self.run)
        self.ring = ringbus.ArrayRing(np.float64, 100_000)

    def time_run(self, kind):
        if kind == "ringbus.ArrayRing":
            self.ring.put_many(self.run)
            self.ring.get_many(100_000, self.out)
        else:
            np.copyto(self.out, self.run)
