"""Load-leveling and priority-queue benchmarks (issue 5, no target): what each pattern's machinery costs.

Every contender handles the same 64 B messages with the same handler, beside the plain pool of
:mod:`ringbus.bench.convoy` (threads that consume, handle, ack) with as many threads:

1. ``LevelledConsumer`` with the rate limit out of the way (1e9/s) and 4 handler threads, beside a plain
   pool of 4: the cost of the token bucket and the hand-off to handler threads (no-op handler, and a
   handler sleeping 2 ms);
2. ``PriorityConsumer`` (design a: prefetch 1 for strict priority, ager running) beside a plain single
   consumer (prefetch 8): the cost of strictness;
3. ``WeightedConsumer`` (design b: three queues 8:3:1, the messages spread evenly, one message taken ahead
   per queue with ``receive``) beside a plain single consumer of one queue.

The clock runs from the first send until the handler has seen every message. The broker is the convoy
suite's child process (``ringbus broker``, fsync=batch, TCP loopback). Ratios are peer time / ours: below 1
means the pattern costs that much throughput; the rate limit itself is checked by the tests, in simulated
time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from ringbus.bench._harness import Case
from ringbus.bench.convoy import broker_url, pool_run, shutdown
from ringbus.bus import connect
from ringbus.message import Message
from ringbus.patterns.load_leveling import LevelledConsumer
from ringbus.patterns.priority import PriorityConsumer, PrioritySender, WeightedConsumer

__all__ = ["cases", "shutdown", "levelled_run", "priority_run", "weighted_run"]

SIZE = 64
WORKERS = 4
IO_SECONDS = 0.002
DONE_TIMEOUT = 300.0
WEIGHTS = {"high": 8, "normal": 3, "low": 1}


class _Count:
    def __init__(self, n: int) -> None:
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()

    def handler(self, io_seconds: float) -> Callable[[Message], None]:
        def handle(message: Message) -> None:
            if io_seconds:
                time.sleep(io_seconds)
            with self.lock:
                self.left -= 1
                if self.left == 0:
                    self.done.set()
        return handle

    def wait(self, what: str) -> None:
        if not self.done.wait(DONE_TIMEOUT):
            raise TimeoutError(f"{self.left} messages of {what} not handled within {DONE_TIMEOUT:g} s")


def _timed(send: Callable[[], object], count: _Count, what: str) -> float:
    start = time.perf_counter()
    send()
    count.wait(what)
    return time.perf_counter() - start


def levelled_run(url: str, n: int, *, io_seconds: float = 0.0) -> float:
    """Seconds for a LevelledConsumer (rate 1e9/s, 4 handler threads) to handle ``n`` messages."""
    count = _Count(n)
    queue = f"rbbench-level-{uuid.uuid4().hex[:10]}"
    with connect(url) as bus:
        bus.declare_queue(queue, max_length=max(n, 1))
        with LevelledConsumer(url, queue, count.handler(io_seconds), rate=1e9, burst=1e6, concurrency=WORKERS):
            return _timed(lambda: bus.send_many(queue, [bytes(SIZE)] * n), count, queue)


def priority_run(url: str, n: int) -> float:
    """Seconds for a PriorityConsumer (one queue, levels high/normal/low in turn) to handle ``n`` messages."""
    count = _Count(n)
    queue = f"rbbench-prio-{uuid.uuid4().hex[:10]}"
    levels = list(WEIGHTS)
    with connect(url) as bus:
        sender = PrioritySender(bus, queue, max_wait=60.0)
        sender.declare()
        body = bytes(SIZE)
        messages = [Message(body, priority=sender.levels[levels[i % 3]]) for i in range(n)]
        with PriorityConsumer(url, queue, count.handler(0.0)):
            return _timed(lambda: bus.send_many(queue, messages), count, queue)


def weighted_run(url: str, n: int) -> float:
    """Seconds for a WeightedConsumer over three queues (8:3:1), messages spread evenly, to handle ``n``."""
    count = _Count(n)
    prefix = f"rbbench-weighted-{uuid.uuid4().hex[:10]}"
    queues = {level: f"{prefix}.{level}" for level in WEIGHTS}
    with connect(url) as bus:
        for queue in queues.values():
            bus.declare_queue(queue)
        shares = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]

        def send() -> None:
            for share, queue in zip(shares, queues.values(), strict=True):
                bus.send_many(queue, [bytes(SIZE)] * share)

        with WeightedConsumer(url, {queues[level]: weight for level, weight in WEIGHTS.items()},
                              count.handler(0.0)):
            return _timed(send, count, prefix)


def _on(url: Callable[[], str], run: Callable[..., float], **kwargs: object) -> Callable[[int], float]:
    return lambda n: run(url(), n, **kwargs)


def _memory() -> str:
    return f"memory://rbbench-level-{uuid.uuid4().hex[:8]}"


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The load-leveling and priority comparisons; scale < 1 shortens every case."""
    del seed  # every message is alike

    def n(base: int) -> int:
        return max(30, int(base * scale))

    plain4 = f"plain pool, {WORKERS} threads"
    plain1 = "plain consumer, 1 thread"
    return [
        Case("levelled consumer (rate unlimited) vs plain pool, no-op handler, broker", "message", n(20_000),
             (f"LevelledConsumer, {WORKERS} handlers", _on(broker_url, levelled_run)),
             [(plain4, _on(broker_url, pool_run, io_seconds=0.0))]),
        Case(f"levelled consumer (rate unlimited) vs plain pool, handler sleeps {IO_SECONDS * 1000:g} ms, broker",
             "message", n(2_000),
             (f"LevelledConsumer, {WORKERS} handlers", _on(broker_url, levelled_run, io_seconds=IO_SECONDS)),
             [(plain4, _on(broker_url, pool_run, io_seconds=IO_SECONDS))]),
        Case("levelled consumer (rate unlimited) vs plain pool, no-op handler, memory://", "message", n(50_000),
             (f"LevelledConsumer, {WORKERS} handlers", _on(_memory, levelled_run)),
             [(plain4, _on(_memory, pool_run, io_seconds=0.0))]),
        Case("priority consumer (design a, prefetch 1) vs plain consumer, no-op handler, broker", "message",
             n(10_000), ("PriorityConsumer", _on(broker_url, priority_run)),
             [(plain1, _on(broker_url, pool_run, io_seconds=0.0, workers=1))]),
        Case("weighted consumer (design b, 3 queues) vs plain consumer, no-op handler, broker", "message",
             n(10_000), ("WeightedConsumer 8:3:1", _on(broker_url, weighted_run)),
             [(plain1, _on(broker_url, pool_run, io_seconds=0.0, workers=1))]),
        Case("weighted consumer (design b, 3 queues) vs plain consumer, no-op handler, memory://", "message",
             n(50_000), ("WeightedConsumer 8:3:1", _on(_memory, weighted_run)),
             [(plain1, _on(_memory, pool_run, io_seconds=0.0, workers=1))]),
    ]
