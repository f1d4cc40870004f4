"""Competing consumers: every message handled once by one of N workers, retried with backoff, poison to the DLQ.

Each test shows its property with counts and id sets, never with timing. Worker processes run against a
broker in a child process (``BrokerProcess``) where something gets killed; the other broker tests use a
broker in a thread of this process.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ringbus
from ringbus.broker.process import BrokerProcess
from ringbus.message import Message
from ringbus.patterns import RetryPolicy
from ringbus.patterns.competing_consumers import Reject, WorkerPool
from ringbus.patterns.idempotency import MemoryDedupStore, SQLiteDedupStore

from . import pool_workers
from .bus_fixtures import WAIT, python_env, run_example, wait_until

pytestmark = pytest.mark.timeout(120)

N = 100_000  # messages of the exactly-once tests
FAST_RETRY = RetryPolicy(base=0.01, factor=2.0, jitter=False)


@pytest.fixture
def process_broker(tmp_path: Path) -> Iterator[str]:
    broker = BrokerProcess(tmp_path / "broker-data").start()
    try:
        yield broker.endpoint
    finally:
        broker.kill()


def fill(url: str, queue: str, n: int, body: bytes = bytes(64), **declare: Any) -> list[str]:
    """Declare ``queue`` and send ``n`` messages; their ids."""
    ids: list[str] = []
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue, **declare)
        for start in range(0, n, 1000):
            ids.extend(bus.send_many(queue, [body] * min(1000, n - start)))
    return ids


def queue_stats(url: str, queue: str) -> ringbus.QueueStats:
    with ringbus.connect(url) as bus:
        return bus.queue_stats(queue)


def drain(url: str, queue: str) -> list[Message]:
    """Every message waiting in ``queue`` (acked)."""
    got = []
    with ringbus.connect(url) as bus:
        while (message := bus.receive(queue, timeout=0.5)) is not None:
            message.ack()
            got.append(message)
    return got


class Calls:
    """A thread-safe record of handler calls, for thread workers."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.ids.append(message.id)


# --- exactly once, when nothing fails ----------------------------------------------------------------------

def test_four_threads_ack_each_message_exactly_once(url: str, queue: str) -> None:
    # Redis, RabbitMQ and NATS cost a round trip per settle (RabbitMQ a confirm per send too): fewer messages keep
    # the test short
    n = N if url.startswith(("memory", "tcp", "ipc")) else N // 20 if url.startswith("amqp") else N // 5
    ids = fill(url, queue, n)
    calls = Calls()
    with WorkerPool(url, queue, calls, workers=4) as pool:
        wait_until(lambda: pool.stats().processed >= n, f"{n} processed")
    stats = pool.stats()
    assert len(calls.ids) == n  # the handler ran n times ...
    assert set(calls.ids) == set(ids)  # ... once for each message sent
    assert (stats.processed, stats.failed, stats.retried, stats.dead_lettered, stats.in_flight) == (n, 0, 0, 0, 0)
    q = queue_stats(url, queue)
    assert (q.acked, q.depth, q.in_flight) == (n, 0, 0)
    # RabbitMQ counts a prefetched message its consumer gave back (stopping) as redelivered: at most a prefetch
    # window per worker; elsewhere none
    assert q.redelivered <= (4 * 16 if url.startswith("amqp") else 0)


@pytest.mark.integration
def test_four_processes_ack_each_message_exactly_once(process_broker: str, queue: str, tmp_path: Path) -> None:
    ids = fill(process_broker, queue, N)
    with WorkerPool(process_broker, queue, functools.partial(pool_workers.record, str(tmp_path)), workers=4,
                    mode="process") as pool:
        assert len(set(pool.pids)) == 4
        wait_until(lambda: pool.stats().processed >= N, f"{N} processed")
    calls = pool_workers.read_records(tmp_path)
    assert len(calls) == N and set(calls) == set(ids)
    assert len(list(tmp_path.glob("*.log"))) == 4  # every worker process took a share
    q = queue_stats(process_broker, queue)
    assert (q.acked, q.redelivered, q.depth, q.in_flight) == (N, 0, 0, 0)


# --- a worker killed -----------------------------------------------------------------------------------------

@pytest.mark.integration
def test_sigkill_one_worker_process_loses_nothing(process_broker: str, queue: str, tmp_path: Path) -> None:
    n, prefetch = 20_000, 16
    ids = fill(process_broker, queue, n)
    handler = functools.partial(pool_workers.record_slowly, str(tmp_path), 0.0005)
    with WorkerPool(process_broker, queue, handler, workers=4, mode="process", prefetch=prefetch) as pool:
        wait_until(lambda: pool.stats().processed >= n // 4, "a quarter processed")
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: queue_stats(process_broker, queue).acked >= n, f"{n} acked")
        stats = pool.stats()
    ended = [line[2:] for line in pool_workers.read_records(tmp_path) if line.startswith("E ")]
    victim_ended = [line[2:] for line in Path(tmp_path, f"{victim}.log").read_text().splitlines()
                    if line.startswith("E ")]
    duplicates = len(ended) - len(set(ended))
    print(f"killed worker {victim} after it handled {len(victim_ended)}; handler calls {len(ended)} for {n} "
          f"messages: {duplicates} handled twice (prefetch {prefetch})")
    assert set(ended) == set(ids)  # every message was handled ...
    assert duplicates <= prefetch  # ... and at most the killed worker's unacked ones twice
    assert {m for m, c in Counter(ended).items() if c > 1} <= set(victim_ended)  # all of them its own
    assert stats.restarted == 1 and stats.workers == 4  # a new worker took the dead one's place
    q = queue_stats(process_broker, queue)
    assert (q.acked, q.depth, q.in_flight, q.dead_lettered) == (n, 0, 0, 0)


# --- failures: backoff, dead letters ------------------------------------------------------------------------

def test_poison_message_ends_in_dlq_with_the_error(url: str, queue: str) -> None:
    calls: Counter[bytes] = Counter()

    def handler(message: Message) -> None:
        calls[bytes(message.body)] += 1
        if message.body == b"poison":
            raise ValueError("cannot parse order 7")

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue, max_attempts=3)
        bus.send_many(queue, [f"order {i}".encode() for i in range(10)])
        poison_id = bus.send(queue, b"poison", headers={"tenant": "acme"})
        with WorkerPool(url, queue, handler, workers=4, retry=FAST_RETRY, declare={"max_attempts": 3}) as pool:
            dead = bus.receive(f"{queue}.dlq", timeout=WAIT)
            wait_until(lambda: (pool.stats().processed, pool.stats().dead_lettered) == (10, 1), "all settled")
            stats = pool.stats()
        assert dead is not None
        dead.ack()
        assert bus.receive(f"{queue}.dlq", timeout=0.2) is None  # one dead letter, not one per attempt
        q = bus.queue_stats(queue)
    assert dead.id == poison_id and dead.body == b"poison"
    assert dead.headers["ringbus-error"] == "ValueError: cannot parse order 7"
    assert dead.headers["ringbus-error-type"] == "ValueError"
    assert dead.headers["ringbus-dead-reason"] == "max_attempts"
    assert dead.headers["ringbus-dead-from"] == queue
    assert dead.headers["ringbus-attempts"] == 3
    assert dead.headers["tenant"] == "acme"  # the message's own headers stay
    assert calls[b"poison"] == 3  # max_attempts deliveries, then no more
    assert sum(calls.values()) == 13
    assert (stats.processed, stats.failed, stats.retried, stats.dead_lettered) == (10, 3, 2, 1)
    assert (q.depth, q.in_flight, q.acked) == (0, 0, 11)


def test_reject_dead_letters_at_once(url: str, queue: str) -> None:
    calls = Calls()

    def handler(message: Message) -> None:
        calls(message)
        raise Reject("order has no customer")

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        bus.send(queue, b"{}")
        with WorkerPool(url, queue, handler, workers=2) as pool:
            dead = bus.receive(f"{queue}.dlq", timeout=WAIT)
            wait_until(lambda: pool.stats().dead_lettered == 1, "the original acked")  # after the copy was sent
            stats = pool.stats()
    assert dead is not None
    assert len(calls.ids) == 1  # no retries
    assert dead.headers["ringbus-dead-reason"] == "rejected"
    assert dead.headers["ringbus-error"] == "Reject: order has no customer"
    assert (stats.failed, stats.retried, stats.dead_lettered) == (1, 0, 1)


@pytest.mark.integration
def test_poison_in_process_workers(process_broker: str, queue: str, tmp_path: Path) -> None:
    fill(process_broker, queue, 100, body=b"good", max_attempts=4)
    with ringbus.connect(process_broker) as bus:
        bus.send(queue, b"poison-1")
        handler = functools.partial(pool_workers.fail_poison, str(tmp_path))
        with WorkerPool(process_broker, queue, handler, workers=4, mode="process", retry=FAST_RETRY,
                        max_attempts=4) as pool:
            dead = bus.receive(f"{queue}.dlq", timeout=WAIT)
            wait_until(lambda: (pool.stats().processed, pool.stats().dead_lettered) == (100, 1), "all settled")
            stats = pool.stats()
    assert dead is not None and dead.body == b"poison-1"
    assert dead.headers["ringbus-error"] == "ValueError: cannot parse order b'poison-1'"
    assert len(pool_workers.read_records(tmp_path)) == 104  # 100 good ones once, the poison one 4 times
    assert (stats.processed, stats.failed, stats.retried, stats.dead_lettered) == (100, 4, 3, 1)


class RecordingRetry(RetryPolicy):
    """A RetryPolicy that remembers every delay it gave."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        object.__setattr__(self, "given", [])

    def delay(self, failures: int) -> float:
        seconds = super().delay(failures)
        self.given.append((failures, seconds))  # type: ignore[attr-defined]
        return seconds


@pytest.mark.parametrize("jitter", [False, True])
def test_backoff_delays_grow(url: str, queue: str, jitter: bool) -> None:
    retry = RecordingRetry(base=0.01, factor=2.0, max_delay=0.05, jitter=jitter)

    def handler(message: Message) -> None:
        raise ConnectionError("payment service down")

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue, max_attempts=5)
        bus.send(queue, b"charge")
        with WorkerPool(url, queue, handler, workers=1, retry=retry, max_attempts=5):
            dead = bus.receive(f"{queue}.dlq", timeout=WAIT)
    assert dead is not None and dead.headers["ringbus-attempts"] == 5
    failures = [f for f, _ in retry.given]  # type: ignore[attr-defined]
    delays = [d for _, d in retry.given]  # type: ignore[attr-defined]
    assert failures == [1, 2, 3, 4]  # a nack with a delay after each failure but the last
    ceilings = [0.01, 0.02, 0.04, 0.05]  # base * factor ** (n - 1), capped at max_delay
    if jitter:
        assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    else:
        assert delays == pytest.approx(ceilings)


def test_a_failed_message_waits_out_its_backoff(url: str, queue: str) -> None:
    """In logical time: while its nack delay runs, the message is 'delayed' and the other messages go first."""
    order: list[bytes] = []
    gate = threading.Event()

    def handler(message: Message) -> None:
        order.append(bytes(message.body))
        if message.body == b"flaky" and message.attempts == 0:
            raise TimeoutError("upstream timed out")
        gate.wait(WAIT)

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        bus.send_many(queue, [b"flaky", b"a", b"b", b"c"])
        with WorkerPool(url, queue, handler, workers=1, prefetch=1, retry=RetryPolicy(base=30.0, jitter=False)):
            wait_until(lambda: len(order) >= 2, "the second message started")
            q = bus.queue_stats(queue)
            gate.set()
            wait_until(lambda: order.count(b"c") == 1, "all others handled")
            assert bus.queue_stats(queue).delayed == 1  # still waiting out its 30 s backoff
    assert order[:4] == [b"flaky", b"a", b"b", b"c"]
    assert (q.delayed, q.redelivered) == (1, 0)


def test_an_ack_after_the_lease_ran_out_is_logged_not_fatal(queue: str, caplog: pytest.LogCaptureFixture) -> None:
    """A handler outlives the visibility timeout: another worker gets the message, the late ack is refused."""
    url = f"memory://pool-lease-{queue}"
    redelivered = threading.Event()
    calls: list[int] = []

    def handler(message: Message) -> None:
        calls.append(message.attempts)
        if message.attempts == 0:
            assert redelivered.wait(WAIT)  # still busy when the lease runs out
        else:
            redelivered.set()

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue, visibility_timeout=0.2)
        bus.send(queue, b"slow")
        with WorkerPool(url, queue, handler, workers=2, prefetch=1) as pool:
            wait_until(lambda: pool.stats().processed == 2, "both deliveries handled")
            bus.send(queue, b"next")  # the pool still works
            wait_until(lambda: pool.stats().processed == 3, "the next message handled")
            stats = pool.stats()
        q = bus.queue_stats(queue)
    assert sorted(calls) == [0, 0, 1]  # 'slow' twice (attempts 0 and 1), 'next' once
    assert (stats.processed, stats.failed, stats.restarted) == (3, 0, 0)
    assert (q.acked, q.depth, q.in_flight) == (2, 0, 0)
    assert any("could not ack" in record.getMessage() for record in caplog.records)


# --- stopping ---------------------------------------------------------------------------------------------------

def test_stop_finishes_in_flight_and_gives_back_the_rest(url: str, queue: str) -> None:
    started = threading.Event()
    release = threading.Event()
    done: list[str] = []

    def handler(message: Message) -> None:
        started.set()
        release.wait(WAIT)
        done.append(message.id)

    ids = fill(url, queue, 50)
    pool = WorkerPool(url, queue, handler, workers=1, prefetch=8).start()
    assert started.wait(WAIT)
    stopper = threading.Thread(target=pool.stop, args=(WAIT,))
    stopper.start()
    time.sleep(0.1)  # the stop is under way while the handler still works (no assertion on timing)
    release.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    q = queue_stats(url, queue)
    assert done == ids[:1]  # the message in hand was finished ...
    assert (q.acked, q.in_flight) == (1, 0)  # ... and acked
    rest = drain(url, queue)
    assert sorted(m.id for m in rest) == sorted(ids[1:])  # the other 49 wait in the queue ...
    # ... the prefetched ones given back without an attempt; RabbitMQ's requeue keeps their place in the queue
    # but counts one attempt each (docs/backends.md)
    assert {m.attempts for m in rest} <= ({0, 1} if url.startswith("amqp") else {0})


@pytest.mark.integration
def test_sigterm_to_a_pool_process_exits_0_and_loses_nothing(process_broker: str, queue: str,
                                                             tmp_path: Path) -> None:
    n = 400
    ids = fill(process_broker, queue, n)
    proc = subprocess.Popen([sys.executable, pool_workers.__file__, process_broker, queue, str(tmp_path)],
                            env=python_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: sum(line.startswith("E ") for line in pool_workers.read_records(tmp_path)) >= 20,
                   "20 messages handled")
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "stopped: processed=" in output
    lines = pool_workers.read_records(tmp_path)
    started = {line[2:] for line in lines if line.startswith("S ")}
    ended = [line[2:] for line in lines if line.startswith("E ")]
    assert started == set(ended) and len(ended) == len(started)  # every message begun was finished, once
    q = queue_stats(process_broker, queue)
    assert (q.acked, q.in_flight) == (len(ended), 0)  # ... and acked before the exit
    rest = drain(process_broker, queue)
    assert len(rest) == n - len(ended) > 0  # the rest stayed in the queue
    assert set(ended) | {m.id for m in rest} == set(ids) and not set(ended) & {m.id for m in rest}
    print(f"SIGTERM after {len(ended)} of {n}: all {len(ended)} in hand finished and acked, {len(rest)} left queued")


def test_pause_takes_nothing_until_resume(url: str, queue: str) -> None:
    calls = Calls()
    fill(url, queue, 10)
    pool = WorkerPool(url, queue, calls, workers=2)
    pool.pause()  # before start: the workers connect, and take nothing
    with pool:
        time.sleep(0.3)  # a quiet window: nothing may be taken while paused
        assert len(calls.ids) == 0 and queue_stats(url, queue).depth == 10
        pool.resume()
        wait_until(lambda: pool.stats().processed == 10, "10 processed")
        pool.pause()
        wait_until(lambda: queue_stats(url, queue).consumers == 0, "every worker left the queue")
        fill(url, queue, 20)
        time.sleep(0.3)
        assert len(calls.ids) == 10 and queue_stats(url, queue).depth == 20
        pool.resume()
        wait_until(lambda: pool.stats().processed == 30, "30 processed")


# --- idempotency inside the pool --------------------------------------------------------------------------------

def test_pool_skips_keys_the_store_has_seen(url: str, queue: str) -> None:
    store = MemoryDedupStore(key=lambda m: str(m.headers["order"]))
    calls = Calls()
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        for order in [1, 2, 3, 2, 1, 4]:  # a producer that sent orders 1 and 2 twice
            bus.send(queue, b"charge", headers={"order": order})
    with WorkerPool(url, queue, calls, workers=1, idempotency=store) as pool:
        wait_until(lambda: pool.stats().processed + pool.stats().skipped == 6, "6 handled or skipped")
        stats = pool.stats()
    assert len(calls.ids) == 4 and (stats.processed, stats.skipped) == (4, 2)
    assert all(store.seen(str(order)) for order in (1, 2, 3, 4))


@pytest.mark.integration
def test_process_pool_with_sqlite_store_runs_each_key_once(process_broker: str, queue: str, tmp_path: Path) -> None:
    store = SQLiteDedupStore(tmp_path / "seen.db")
    ids = fill(process_broker, queue, 2000)
    for message_id in ids[::2]:  # half were handled before (by a worker that died before its acks, say)
        store.mark(message_id)
    records = tmp_path / "records"
    records.mkdir()
    with WorkerPool(process_broker, queue, functools.partial(pool_workers.record, str(records)), workers=4,
                    mode="process", idempotency=store) as pool:
        wait_until(lambda: pool.stats().processed + pool.stats().skipped >= 2000, "2000 handled or skipped")
        stats = pool.stats()
    calls = pool_workers.read_records(records)
    assert sorted(calls) == sorted(ids[1::2])
    assert (stats.processed, stats.skipped) == (1000, 1000)
    assert len(store) == 2000


# --- arguments --------------------------------------------------------------------------------------------------

def test_bad_arguments_name_what_is_wrong(tmp_path: Path) -> None:
    url = "memory://pool-args"
    with pytest.raises(ValueError, match="mode='process' needs a broker url"):
        WorkerPool(url, "q", pool_workers.record, mode="process")
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(url, "q", print, workers=0)
    with pytest.raises(ValueError, match="prefetch"):
        WorkerPool(url, "q", print, prefetch=0)
    with pytest.raises(ValueError, match="mode"):
        WorkerPool(url, "q", print, mode="fork")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler"):
        WorkerPool(url, "q", "print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="picklable"):
        WorkerPool("tcp://127.0.0.1:1", "q", lambda m: None, mode="process")
    with pytest.raises(ValueError, match="SQLiteDedupStore"):
        WorkerPool("tcp://127.0.0.1:1", "q", pool_workers.record, mode="process", idempotency=MemoryDedupStore())
    with pytest.raises(ValueError, match="max_attempts"):
        WorkerPool(url, "q", print, max_attempts=3, declare={"max_attempts": 4})
    with pytest.raises(TypeError, match="declare"):
        WorkerPool(url, "q", print, declare={"max_attempt": 4})
    with pytest.raises(ringbus.NotFound, match="declare"):
        WorkerPool(url, "never-declared", print).start()


# --- the example --------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_order_processing_example_runs() -> None:
    output = run_example("order_processing.py")
    assert "processed 194, retried 10, dead-lettered 6" in output, output
    assert "200 acked, 0 waiting, 0 in flight" in output
