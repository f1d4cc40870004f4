"""``ringbus bench metrics``: what the per-queue latency histograms cost (issue 9: "Metrics on: <= 5%").

Three comparisons, metrics on (the default, ringbus's row) against metrics off (the peer row), interleaved
in one run so the ratio (off time / on time; >= 0.95 meets the target) compares like with like:

1. the broker end to end: a producer process ``send_many``, a consumer process ``consume`` + ``ack``,
   through an embedded broker (``Broker(metrics=...)``, fsync=batch, TCP loopback);
2. ``memory://``: ``send``, then ``consume`` + ``ack``, one thread (memory:// has no switch of its own yet:
   the run turns its namespace's book off directly);
3. the queue engine alone (:class:`~ringbus.broker.queues.QueueBook`, which memory:// and the broker share):
   send, fetch, ack in one thread - no I/O around it, so the histograms' share of the time is largest here.

The native Ring/PriorityQueue paths do not record metrics, so the core suite is unchanged by them.
``python -m ringbus.bench.metrics --scale 0.05`` runs it on its own.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from itertools import repeat

from ringbus.backends.memory import _namespace
from ringbus.bench._harness import Case, run_case
from ringbus.bench.broker import (
    BATCH,
    PREFETCH,
    SIZE,
    _ringbus_consumer,
    _ringbus_producer,
    _run_pair,
)
from ringbus.broker.queues import QueueBook
from ringbus.broker.server import Broker
from ringbus.bus import QueueOptions, connect
from ringbus.message import Message

__all__ = ["cases", "main", "broker_cycle", "memory_cycle", "book_cycle", "TARGET"]

TARGET = 0.95  # metrics-off time / metrics-on time: on costs at most ~5%
OFF = "metrics off"


def broker_cycle(metrics: bool) -> Callable[[int], float]:
    """Seconds for n messages from a producer process to a consumer process through a broker in this one."""
    def run(n: int) -> float:
        with tempfile.TemporaryDirectory(prefix="rbbench-metrics-") as data, \
                Broker(data, "tcp://127.0.0.1:0", metrics=metrics) as broker:
            with connect(broker.endpoint) as bus:
                bus.declare_queue("bench")
            return _run_pair((_ringbus_producer, {"url": broker.endpoint, "queue": "bench", "n": n}),
                             (_ringbus_consumer, {"url": broker.endpoint, "queue": "bench", "n": n}))
    return run


def memory_cycle(metrics: bool) -> Callable[[int], float]:
    """Seconds for n send, then n consume + ack, on a fresh memory:// namespace."""
    def run(n: int) -> float:
        url = f"memory://rbbench-metrics-{uuid.uuid4().hex}"
        _namespace(url).queues.metrics = metrics  # before the declare: its queues get histograms or not
        with connect(url) as bus:
            bus.declare_queue("bench", durable=False)
            body = bytes(SIZE)
            send = bus.send
            t0 = time.perf_counter()
            for _ in repeat(None, n):
                send("bench", body)
            for left, message in zip(range(n - 1, -1, -1), bus.consume("bench", prefetch=PREFETCH, timeout=30.0),
                                     strict=False):
                message.ack()
                if not left:
                    break
            return time.perf_counter() - t0
    return run


def book_cycle(metrics: bool) -> Callable[[int], float]:
    """Seconds for n send + fetch + ack on one QueueBook, in batches of BATCH."""
    def run(n: int) -> float:
        book = QueueBook(metrics=metrics)
        book.declare("bench", QueueOptions(durable=False))
        batch = [Message(bytes(SIZE)) for _ in repeat(None, BATCH)]
        send, fetch, ack = book.send, book.fetch, book.ack
        t0 = time.perf_counter()
        for _ in repeat(None, n // BATCH):
            for message in batch:
                send("bench", message)
            for tag, _, _ in fetch("bench", "consumer", BATCH):
                ack("bench", tag)
        return time.perf_counter() - t0
    return run


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The three comparisons; scale < 1 shortens each."""

    def n(base: int) -> int:
        return max(BATCH * 2, int(base * scale) // BATCH * BATCH)

    return [
        Case(f"broker send_many x{BATCH} -> consume + ack, {SIZE} B", "message", n(100_000),
             ("metrics on (default)", broker_cycle(True)), [(OFF, broker_cycle(False))], target={OFF: TARGET}),
        Case(f"memory:// send, then consume({PREFETCH}) + ack, {SIZE} B", "message", n(100_000),
             ("metrics on (default)", memory_cycle(True)), [(OFF, memory_cycle(False))], target={OFF: TARGET}),
        Case(f"QueueBook send + fetch + ack (memory:// and the broker's engine), {SIZE} B", "message",
             n(200_000), ("metrics on (default)", book_cycle(True)), [(OFF, book_cycle(False))],
             target={OFF: TARGET}),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparisons and print the table (``ringbus bench metrics`` does the same with the others)."""
    from ringbus.bench.report import format_table

    parser = argparse.ArgumentParser(prog="python -m ringbus.bench.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case; medians are compared (default 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="work per round relative to the default")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.scale <= 0:
        parser.error("--rounds must be >= 1 and --scale > 0")
    rows = [row for case in cases(args.scale) for row in run_case(case, args.rounds)]
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
