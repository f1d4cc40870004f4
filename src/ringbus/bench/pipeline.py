"""Pipes and filters benchmarks (issue 6): the ShmChannel pipeline beside multiprocessing.Queue, and what a
second process buys a CPU-bound stage.

1. Three trivial stages (``x + 1`` three times, small ints), each in a process of its own, source and sink in
   the measuring process: :class:`ringbus.patterns.pipeline.Pipeline` over ShmChannel beside the same
   pipeline written over ``multiprocessing.Queue`` (one ``put``/``get`` per item, the way it is usually
   written): the issue asks for >= 5x. A third row passes the same items over ``multiprocessing.Queue`` in
   lists of 256 (what batching alone buys, without shared memory); it has no target.
2. A CPU-bound middle stage (about 0.1 ms of pure Python per item) in 2 processes beside 1 process, the other
   stages trivial: the issue asks for >= 1.7x on a 2-core machine.

Each contender times itself from the moment the source hands over its first item (the stage processes are
started and attached by then: spawning is set-up) to the last output at the sink.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from typing import Any

from ringbus.bench._harness import Case
from ringbus.patterns.pipeline import Pipeline, Stage

__all__ = ["cases", "pipeline_run", "mp_queue_run"]

_SPAWN = multiprocessing.get_context("spawn")
MP_BATCH = 256
CPU_LOOP = 2000  # iterations of the CPU-bound stage per item (~0.1 ms)


# Stage functions: module level, so spawned processes import them.
def inc(x: int) -> int:
    return x + 1


def cpu_bound(x: int) -> int:
    total = 0
    for i in range(CPU_LOOP):
        total += i ^ x
    return total & 0xFFFF


class _Clock:
    """A source that notes when its first item is taken (the pipeline is up by then)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = 0.0

    def __iter__(self) -> Iterator[int]:
        self.started = time.perf_counter()
        yield from range(self.n)


def pipeline_run(stages: list[Any], n: int, **options: Any) -> float:
    """Seconds from the first item taken to the last output of a ringbus Pipeline."""
    source = _Clock(n)
    count = 0
    elapsed = 0.0
    for _ in Pipeline(stages, **options).run(source):
        count += 1
        if count == n:  # the last output: what follows (the processes exiting) is tear-down
            elapsed = time.perf_counter() - source.started
    if count != n:
        raise RuntimeError(f"the pipeline delivered {count} of {n} items")
    return elapsed


# --- the same pipeline over multiprocessing.Queue ------------------------------------------------------------------

def _mp_stage(fn: Callable[[Any], Any], inbox: Any, outbox: Any, batched: bool) -> None:
    while True:
        item = inbox.get()
        if item is None:
            outbox.put(None)
            return
        outbox.put([fn(x) for x in item] if batched else fn(item))


def mp_queue_run(fns: list[Callable[[Any], Any]], n: int, *, batched: bool = False, maxsize: int = 1000) -> float:
    """Seconds to pass n items through stage processes joined by bounded multiprocessing.Queues."""
    queues = [_SPAWN.Queue(maxsize) for _ in range(len(fns) + 1)]
    workers = [_SPAWN.Process(target=_mp_stage, args=(fn, queues[i], queues[i + 1], batched), daemon=True)
               for i, fn in enumerate(fns)]
    for worker in workers:
        worker.start()
    first, last = queues[0], queues[-1]
    try:
        first.put([0] if batched else 0)  # warm-up: every process up and attached
        last.get(timeout=120)
        count = 0

        def feed() -> None:
            if batched:
                for start in range(0, n, MP_BATCH):
                    first.put(list(range(start, min(n, start + MP_BATCH))))
            else:
                for i in range(n):
                    first.put(i)
            first.put(None)

        started = time.perf_counter()
        import threading

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        while True:
            got = last.get(timeout=120)
            if got is None:
                break
            count += len(got) if batched else 1
        elapsed = time.perf_counter() - started
        feeder.join()
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
        for q in queues:
            q.close()
            q.join_thread()
    if count != n:
        raise RuntimeError(f"the multiprocessing.Queue pipeline delivered {count} of {n} items")
    return elapsed


def trivial_case(n: int) -> Case:
    return Case(
        "pipeline: 3 trivial stages, small ints",
        "item through 3 stages",
        n,
        ("ringbus Pipeline over ShmChannel", lambda k: pipeline_run([inc, inc, inc], k)),
        [
            ("multiprocessing.Queue, one item per put", lambda k: mp_queue_run([inc, inc, inc], k)),
            (f"multiprocessing.Queue, lists of {MP_BATCH}", lambda k: mp_queue_run([inc, inc, inc], k,
                                                                                   batched=True)),
        ],
        target={"multiprocessing.Queue, one item per put": 5.0},
    )


def cpu_case(n: int) -> Case:
    return Case(
        "pipeline: CPU-bound middle stage",
        "item (~0.1 ms CPU)",
        n,
        ("middle stage in 2 processes", lambda k: pipeline_run([inc, Stage(cpu_bound, processes=2), inc], k)),
        [("middle stage in 1 process", lambda k: pipeline_run([inc, Stage(cpu_bound, processes=1), inc], k))],
        target={"middle stage in 1 process": 1.7},
    )


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The pipeline comparisons; scale < 1 shortens every case (``seed`` is unused: the items are a range)."""
    del seed
    return [
        trivial_case(max(2_000, int(200_000 * scale))),
        cpu_case(max(200, int(20_000 * scale))),
    ]
