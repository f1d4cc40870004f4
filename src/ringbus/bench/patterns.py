"""Pattern benchmarks (issue 5): competing consumers beside a Celery-style RabbitMQ pool; the convoy suite too.

Competing consumers: a queue holding ``n`` durable 64-byte messages, drained
by 4 worker processes with a handler that does nothing, timed from the
moment the workers may take messages until the server has applied the last
ack (set-up - filling the queue, starting the processes - stays out):

- ringbus: :class:`~ringbus.patterns.competing_consumers.WorkerPool`
  (``mode="process"``) on the embedded broker (a ``ringbus broker`` child,
  fsync=batch, TCP loopback), started paused and then resumed;
- the peer, the way a Celery worker pool drives RabbitMQ: 4 processes, each a
  pika ``BlockingConnection`` with ``basic_qos(prefetch_count=100)``, manual
  ``basic_ack`` of every message, on a durable queue of persistent messages.

RabbitMQ's rows are left out with a note when pika or the server (127.0.0.1:5672,
guest/guest) is missing. :func:`cases` also returns the sequential-convoy
cases of :mod:`ringbus.bench.convoy` when that module is there.
"""

from __future__ import annotations

import time
from typing import Any

from ringbus.bench._harness import Case
from ringbus.bench.broker import (
    CHILD_TIMEOUT,
    RABBIT_PREFETCH,
    SIZE,
    SPAWN,
    Ready,
    _broker,
    _Children,
    _rabbit,
    _rabbit_queue,
    now,
    pika,
    rabbit_missing,
)
from ringbus.bus import connect
from ringbus.message import Message
from ringbus.patterns.competing_consumers import WorkerPool

__all__ = ["cases", "ringbus_pool", "rabbit_pool", "missing_peers"]

WORKERS = 4
PREFETCH = 100  # per worker, as the peer's basic_qos
FILL_BATCH = 1000
POLL = 0.002  # seconds between two looks at the progress counters (a sleep, not a spin)


def noop(message: Message | bytes) -> None:
    """The handler of both pools: no work, so the figure is the pool's and the broker's cost per message."""


def _wait(done: Any, what: str) -> None:
    deadline = now() + CHILD_TIMEOUT
    while not done():
        if now() > deadline:
            raise TimeoutError(f"{what} not within {CHILD_TIMEOUT:g} s")
        time.sleep(POLL)


def ringbus_pool(n: int) -> float:
    """Seconds for 4 WorkerPool processes to drain ``n`` messages from the embedded broker."""
    with _broker() as url, connect(url) as bus:
        bus.declare_queue("bench")
        body = bytes(SIZE)
        for start in range(0, n, FILL_BATCH):
            bus.send_many("bench", [body] * min(FILL_BATCH, n - start))
        pool = WorkerPool(url, "bench", noop, workers=WORKERS, mode="process", prefetch=PREFETCH)
        pool.pause()
        pool.start(timeout=CHILD_TIMEOUT)  # connected, taking nothing yet
        try:
            t0 = now()
            pool.resume()
            _wait(lambda: pool.stats().processed >= n, f"ringbus pool: {n} processed")
            _wait(lambda: bus.queue_stats("bench").acked >= n, f"ringbus pool: {n} acks applied")
            t1 = now()
        finally:
            pool.stop(timeout=30.0)
        return t1 - t0


def _rabbit_worker(ready: Ready, stop: Any, queue: str, counts: Any, index: int) -> float:
    """One Celery-style worker process: prefetch 100, handle, ack each; when told to stop, the time its acks
    were all applied (a synchronous call after them returns)."""
    connection = _rabbit()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=RABBIT_PREFETCH)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        noop(body)
        ch.basic_ack(method.delivery_tag)
        counts[index] += 1

    ready()
    channel.basic_consume(queue, on_message, auto_ack=False)
    while not stop.is_set():
        connection.process_data_events(time_limit=0.05)
    channel.queue_declare(queue, passive=True)
    t1 = now()
    connection.close()
    return t1


def rabbit_pool(n: int) -> float:
    """Seconds for 4 pika worker processes to drain ``n`` persistent messages from a durable RabbitMQ queue."""
    with _rabbit_queue() as queue:
        connection = _rabbit()
        try:
            channel = connection.channel()
            persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
            body = bytes(SIZE)
            for _ in range(n):
                channel.basic_publish("", queue, body, persistent)
            _wait(lambda: channel.queue_declare(queue, passive=True).method.message_count >= n,
                  f"RabbitMQ: {n} messages queued")
        finally:
            connection.close()
        counts = SPAWN.RawArray("q", WORKERS)
        with _Children() as children:
            for index in range(WORKERS):
                children.start(f"worker-{index}", _rabbit_worker, queue=queue, counts=counts, index=index)
            children.release()
            t0 = now()
            _wait(lambda: sum(counts) >= n, f"RabbitMQ pool: {n} acked")
            children.stop.set()
            ends: dict[str, float] = children.collect()
        return max(ends.values()) - t0


RABBIT_POOL = f"RabbitMQ pika, {WORKERS} processes, prefetch {RABBIT_PREFETCH}, ack each (Celery-style)"


def missing_peers() -> list[str]:
    """Why peers are left out (for the table's notes)."""
    reason = rabbit_missing()
    return [reason] if reason else []


def competing_consumers_case(n: int) -> Case:
    peers = [] if rabbit_missing() else [(RABBIT_POOL, rabbit_pool)]
    return Case(
        f"competing consumers: {WORKERS} worker processes drain a durable queue, {SIZE} B, no-op handler",
        "message",
        n,
        (f"ringbus WorkerPool, {WORKERS} processes, prefetch {PREFETCH}, embedded broker", ringbus_pool),
        peers,
        target={RABBIT_POOL: 3.0},
    )


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The pattern comparisons; scale < 1 shortens every case. Includes the convoy cases when present."""
    result = [competing_consumers_case(max(WORKERS * PREFETCH, int(100_000 * scale)))]
    try:
        from ringbus.bench import convoy
    except ImportError:  # its author's module is not in this checkout
        return result
    return result + convoy.cases(scale, seed)
