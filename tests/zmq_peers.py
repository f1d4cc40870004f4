"""Child-process bodies for the ZeroMQ transport tests (importable, so spawned children can run them)."""

from __future__ import annotations

import time
from typing import Any

from ringbus import Empty
from ringbus.message import Message
from ringbus.transport import Puller, Pusher

# A child gives up after this long whatever happens, so a failed test never leaves it behind.
LIFETIME = 120.0
BATCH = 500


def numbered(producer: int, seq: int) -> Message:
    """Message number seq of one producer: the key names the producer, the body holds seq."""
    return Message(seq.to_bytes(8, "little"), key=f"p{producer}")


def send_numbered(endpoint: str, producer: int, n: int, done: Any) -> None:
    """Connect a Pusher and send n numbered messages in batches; close only once the receiver has them all."""
    with Pusher(endpoint, bind=False, linger=0) as tx:
        for start in range(0, n, BATCH):
            batch = [numbered(producer, i) for i in range(start, min(start + BATCH, n))]
            # linger=0 drops what is still queued at close, hence the wait for `done` below.
            if tx.send_many(batch, timeout=LIFETIME) != len(batch):
                raise SystemExit(f"producer {producer}: could not send batch at {start}")
        done.wait(LIFETIME)


def work(tasks: str, results: str, worker: int, ready: Any, stop: Any) -> None:
    """A competing consumer: take tasks from a fan-out Pusher, report each one as (worker, task body)."""
    until = time.monotonic() + LIFETIME
    with Puller(tasks, bind=False, linger=0) as rx, Pusher(results, bind=False, linger=0) as tx:
        ready.put(worker)
        while not stop.is_set() and time.monotonic() < until:
            try:
                batch = rx.recv_many(100, timeout=0.05)
            except Empty:
                continue
            tx.send_many([Message(task.body, key=f"w{worker}") for task in batch], timeout=LIFETIME)
