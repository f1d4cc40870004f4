"""Sequential convoy benchmarks (issue 5): what ordering per key costs, and what more workers buy.

Three comparisons, every contender on the same messages (64 B bodies over
100 keys, assigned at random from the seed) and the same handler:

1. the convoy with 4 workers beside the convoy with 1 worker, handler
   sleeping 2 ms (I/O-bound): the issue asks for >= 3x;
2. the convoy beside a plain competing-consumers pool (4 threads on a queue
   without ``ordered_by_key``, ack after the handler, written here so the
   figure depends on nothing but the Bus), I/O-bound handler: convoy time at
   most 1.3x the pool's, i.e. a ratio >= 1/1.3;
3. the same with a handler that does nothing, so the ratio is the bare
   per-message cost of ordering, on the embedded broker and on memory://;
   a third row, the plain pool on an ``ordered_by_key`` queue, splits that
   cost between the bus (its per-key bookkeeping) and the convoy's own code.

Each contender starts its workers on an empty queue, then the clock runs
from the first send until the handler has seen every message. The broker
runs as a child process (``ringbus broker``, fsync=batch, TCP loopback),
one for the whole run, stopped at exit or by :func:`shutdown`.
"""

from __future__ import annotations

import atexit
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

from ringbus.bench._harness import Case
from ringbus.broker.process import BrokerProcess
from ringbus.bus import connect
from ringbus.message import Message
from ringbus.patterns.convoy import SequentialConvoy

__all__ = ["cases", "shutdown", "convoy_run", "pool_run"]

SIZE = 64  # bytes per message body
KEYS = 100
WORKERS = 4
PREFETCH = 8  # the convoy's default, and the pool's
IO_SECONDS = 0.002  # the I/O-bound handler's sleep
DONE_TIMEOUT = 300.0  # a round that has not finished by then is stuck, not slow
OVERHEAD_TARGET = round(1 / 1.3, 2)  # peer time / convoy time >= this  <=>  convoy time <= 1.3x the pool's

_broker: BrokerProcess | None = None
_broker_dir: tempfile.TemporaryDirectory[str] | None = None
_seed = 0


def broker_url() -> str:
    """The shared broker child's endpoint (started on first use)."""
    global _broker, _broker_dir
    if _broker is None:
        _broker_dir = tempfile.TemporaryDirectory(prefix="rbbench-convoy-")
        _broker = BrokerProcess(_broker_dir.name, "tcp://127.0.0.1:0", fsync="batch",
                                extra=["--log-level", "warning"]).start()
        atexit.register(shutdown)
    return _broker.endpoint


def shutdown() -> None:
    """Stop the shared broker child, if one was started."""
    global _broker, _broker_dir
    if _broker is not None:
        process = _broker.process
        if process is not None and process.poll() is None:
            _broker.stop()
        _broker = None
    if _broker_dir is not None:
        _broker_dir.cleanup()
        _broker_dir = None


class _Countdown:
    """Counts handled messages; ``done`` is set at ``n``."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()

    def tick(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.done.set()


def _handler(countdown: _Countdown, io_seconds: float) -> Callable[[Message], None]:
    if io_seconds:
        def handle(message: Message) -> None:
            time.sleep(io_seconds)
            countdown.tick()
    else:
        def handle(message: Message) -> None:
            countdown.tick()
    return handle


def _messages(n: int) -> list[Message]:
    rng = random.Random(_seed + n)
    body = bytes(SIZE)
    return [Message(body, key=f"k{rng.randrange(KEYS)}") for _ in range(n)]


def _timed_send(url: str, queue: str, n: int, countdown: _Countdown) -> float:
    messages = _messages(n)
    with connect(url) as bus:
        start = time.perf_counter()
        bus.send_many(queue, messages)
        if not countdown.done.wait(DONE_TIMEOUT):
            raise TimeoutError(f"{countdown.left} of {n} messages of {queue!r} not handled in {DONE_TIMEOUT:g} s")
        return time.perf_counter() - start


def convoy_run(url: str, n: int, *, workers: int = WORKERS, io_seconds: float = IO_SECONDS) -> float:
    """Seconds for a :class:`SequentialConvoy` of ``workers`` threads to handle ``n`` messages."""
    countdown = _Countdown(n)
    queue = f"rbbench-convoy-{uuid.uuid4().hex[:10]}"
    convoy = SequentialConvoy(url, queue, _handler(countdown, io_seconds), workers=workers, prefetch=PREFETCH,
                              durable=True, poll=0.05)
    convoy.start()
    try:
        return _timed_send(url, queue, n, countdown)
    finally:
        convoy.stop()


def pool_run(url: str, n: int, *, workers: int = WORKERS, io_seconds: float = IO_SECONDS,
             ordered: bool = False) -> float:
    """Seconds for a plain pool (``workers`` threads: consume, handle, ack) to handle ``n``; ``ordered``: on a
    queue declared ``ordered_by_key`` (the bus's ordering without the convoy)."""
    countdown = _Countdown(n)
    handle = _handler(countdown, io_seconds)
    queue = f"rbbench-pool-{uuid.uuid4().hex[:10]}"
    with connect(url) as bus:
        bus.declare_queue(queue, durable=True, ordered_by_key=ordered)
    stop = threading.Event()
    started = threading.Barrier(workers + 1)

    def work() -> None:
        with connect(url) as bus:
            started.wait()
            while not stop.is_set():
                for message in bus.consume(queue, prefetch=PREFETCH, timeout=0.05):
                    handle(message)
                    message.ack()
                    if stop.is_set():
                        break

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    started.wait()
    try:
        return _timed_send(url, queue, n, countdown)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10.0)


def _broker_contender(run: Callable[..., float], **kwargs: object) -> Callable[[int], float]:
    return lambda n: run(broker_url(), n, **kwargs)


def _memory_contender(run: Callable[..., float], **kwargs: object) -> Callable[[int], float]:
    return lambda n: run(f"memory://rbbench-convoy-{uuid.uuid4().hex[:8]}", n, **kwargs)


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The convoy comparisons; scale < 1 shortens every case."""
    global _seed
    _seed = seed

    def n(base: int) -> int:
        return max(40, int(base * scale))

    plain = f"plain pool, {WORKERS} threads"
    ordered = f"plain pool, {WORKERS} threads, ordered_by_key queue"
    return [
        Case(f"convoy, handler sleeps {IO_SECONDS * 1000:g} ms, {KEYS} keys, broker: {WORKERS} workers vs 1",
             "message", n(2_000),
             (f"convoy, {WORKERS} workers", _broker_contender(convoy_run)),
             [("convoy, 1 worker", _broker_contender(convoy_run, workers=1))],
             target={"convoy, 1 worker": 3.0}),
        Case(f"convoy vs plain pool, handler sleeps {IO_SECONDS * 1000:g} ms, broker", "message", n(2_000),
             (f"convoy, {WORKERS} workers", _broker_contender(convoy_run)),
             [(plain, _broker_contender(pool_run))],
             target={plain: OVERHEAD_TARGET}),
        Case("convoy vs plain pool, no-op handler, broker", "message", n(20_000),
             (f"convoy, {WORKERS} workers", _broker_contender(convoy_run, io_seconds=0.0)),
             [(plain, _broker_contender(pool_run, io_seconds=0.0)),
              (ordered, _broker_contender(pool_run, io_seconds=0.0, ordered=True))],
             target={plain: OVERHEAD_TARGET}),
        Case("convoy vs plain pool, no-op handler, memory://", "message", n(50_000),
             (f"convoy, {WORKERS} workers", _memory_contender(convoy_run, io_seconds=0.0)),
             [(plain, _memory_contender(pool_run, io_seconds=0.0)),
              (ordered, _memory_contender(pool_run, io_seconds=0.0, ordered=True))],
             target={plain: OVERHEAD_TARGET}),
    ]
