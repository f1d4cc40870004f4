"""Part 6: poison messages - one whose handler raises, one that SIGKILLs the worker process handling it.

A :class:`WorkerPool` of worker processes (``mode="process"``, ``prefetch=1``) consumes a queue declared
with ``max_attempts``; among good messages are ``poison-raise`` ones (the handler raises ``ValueError``)
and ``poison-kill`` ones (the handler SIGKILLs its own process before any settle). Promise: each poison
message is delivered exactly ``max_attempts`` times and then sits in the dead-letter queue with the reason
- the error itself for one that raised (the pool's headers), ``max_attempts`` for one that killed its
workers (the broker's: nobody lived to say more) - and every good message is handled exactly once.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path

import pytest

import ringbus
from ringbus.broker.process import BrokerProcess
from ringbus.patterns import RetryPolicy
from ringbus.patterns.competing_consumers import WorkerPool

from . import figures
from ._peers import poison_handler, read_lines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MAX_ATTEMPTS = 3
WAIT = 120.0


def _poison(tmp_path: Path, good: int, raising: int, killing: int) -> None:
    records = tmp_path / "records"
    records.mkdir()
    bodies = [b"good-%d" % i for i in range(good)]
    bodies += [b"poison-raise-%d" % i for i in range(raising)] + [b"poison-kill-%d" % i for i in range(killing)]
    # A killed worker's delivery comes back when its lease (visibility_timeout) or its session (3 heartbeats)
    # runs out, whichever is first.
    declare = {"max_attempts": MAX_ATTEMPTS, "visibility_timeout": 2.0}
    with BrokerProcess(tmp_path / "data", f"ipc://{tmp_path}/broker.sock", heartbeat=0.5) as broker:
        url = broker.endpoint
        with ringbus.connect(url) as bus:
            bus.declare_queue("orders", **declare)  # type: ignore[arg-type]
            ids = dict(zip(bus.send_many("orders", bodies), bodies, strict=True))
            started = time.monotonic()
            pool = WorkerPool(url, "orders", functools.partial(poison_handler, str(records)), workers=4,
                              mode="process", prefetch=1, declare=declare,
                              retry=RetryPolicy(base=0.01, factor=2.0, jitter=False))
            with pool:
                dead: dict[str, ringbus.Message] = {}
                deadline = time.monotonic() + WAIT
                while len(dead) < raising + killing:
                    assert time.monotonic() < deadline, f"{len(dead)} of {raising + killing} dead letters"
                    message = bus.receive("orders.dlq", timeout=1.0)
                    if message is not None:
                        message.ack()
                        dead[message.id] = message
                to_dlq = time.monotonic() - started
                deadline = time.monotonic() + WAIT
                while bus.queue_stats("orders").acked + bus.queue_stats("orders").dead_lettered < len(bodies):
                    assert time.monotonic() < deadline, "the good messages were not all handled"
                    time.sleep(0.05)
                stats = pool.stats()
            assert bus.receive("orders.dlq", timeout=0.5) is None  # one dead letter each, not one per attempt
            queue = bus.queue_stats("orders")
    calls = Counter(fields[1] for fields in read_lines(records) if fields[0] == "H")
    attempts_seen: dict[str, list[int]] = {}
    for fields in read_lines(records):
        attempts_seen.setdefault(fields[1], []).append(int(fields[2]))
    figures.record("poison", max_attempts=MAX_ATTEMPTS, good=good, raising=raising, killing=killing,
                   deliveries_raising=sorted({calls[m] for m, b in ids.items() if b.startswith(b"poison-raise")}),
                   deliveries_killing=sorted({calls[m] for m, b in ids.items() if b.startswith(b"poison-kill")}),
                   workers_restarted=stats.restarted, seconds_to_dead_letters=round(to_dlq, 2),
                   reasons=sorted({str(m.headers["ringbus-dead-reason"]) for m in dead.values()}))
    for mid, body in ids.items():
        if body.startswith(b"poison-"):
            assert calls[mid] == MAX_ATTEMPTS, f"{body!r} delivered {calls[mid]} times"
            assert sorted(attempts_seen[mid]) == list(range(MAX_ATTEMPTS))  # attempts 0, 1, 2: counted right
            letter = dead[mid]
            assert letter.body == body and letter.headers["ringbus-dead-from"] == "orders"
            assert letter.headers["ringbus-dead-reason"] == "max_attempts"
            if body.startswith(b"poison-raise"):
                assert letter.headers["ringbus-error"] == f"ValueError: cannot parse order {body.decode()!r}"
                assert letter.headers["ringbus-error-type"] == "ValueError"
                assert letter.headers["ringbus-attempts"] == MAX_ATTEMPTS
            else:
                assert "ringbus-error" not in letter.headers  # died each time: no error to tell
                assert letter.attempts == MAX_ATTEMPTS
        else:
            assert calls[mid] == 1, f"{body!r} handled {calls[mid]} times"
    assert set(dead) == {m for m, b in ids.items() if b.startswith(b"poison-")}
    assert stats.restarted == killing * MAX_ATTEMPTS  # a worker died for each delivery of each killing message
    assert (stats.processed, stats.dead_lettered) == (good, raising)  # the pool dead-lettered the raising ones
    assert (queue.depth, queue.in_flight) == (0, 0)
    assert queue.acked == good + raising  # the raising ones acked once their copy was in the dead-letter queue
    assert queue.dead_lettered == killing  # the killing ones moved by the broker at their last attempt


def test_a_raising_and_a_killing_poison_message(tmp_path: Path) -> None:
    _poison(tmp_path, good=200, raising=1, killing=1)


@pytest.mark.full
def test_many_poison_messages_among_many_good_ones(tmp_path: Path) -> None:
    _poison(tmp_path, good=5_000, raising=20, killing=5)
