"""Many producers and consumers, each thread on its own bus: every message is received and acked exactly once."""

from __future__ import annotations

import collections
import threading
import time

from ringbus.bus import connect

from .support import WAIT

PRODUCERS, PER_PRODUCER, CONSUMERS = 4, 500, 2


def test_producers_and_consumers_lose_and_repeat_nothing(url, queue, threads):
    q = queue()
    total = PRODUCERS * PER_PRODUCER
    lock = threading.Lock()
    received: collections.Counter[str] = collections.Counter()
    done = threading.Event()

    def produce(p: int) -> list[str]:
        with connect(url) as own:
            return [own.send(q, b"%d-%d" % (p, i)) for i in range(PER_PRODUCER)]

    def consume() -> None:
        deadline = time.monotonic() + 6 * WAIT
        with connect(url) as own:
            while not done.is_set() and time.monotonic() < deadline:
                message = own.receive(q, timeout=0.1)
                if message is None:
                    continue
                message.ack()
                with lock:
                    received[message.id] += 1
                    if sum(received.values()) >= total:
                        done.set()

    for _ in range(CONSUMERS):
        threads.start(consume)
    for p in range(PRODUCERS):
        threads.start(produce, p, name=f"producer-{p}")
    results = threads.join(timeout=8 * WAIT)
    sent = [i for p in range(PRODUCERS) for i in results[f"producer-{p}"]]
    assert len(set(sent)) == total
    assert set(received) == set(sent)
    assert max(received.values()) == 1, [i for i, n in received.items() if n > 1]
