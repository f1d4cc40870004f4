"""Queue-based load leveling: bursts are queued (up to max_length) and drained at the rate limit, N at a time.

Rates are measured in simulated time (the consumer's clock and sleep are injected), so the numbers do not
depend on how loaded the machine is; concurrency is counted, never timed.
"""

from __future__ import annotations

import importlib.util
import threading
from itertools import pairwise
from pathlib import Path

import pytest

import ringbus
from ringbus.patterns import RetryPolicy
from ringbus.patterns.load_leveling import LevelledConsumer, LevelledProducer, TokenBucket

from .bus_fixtures import run_python
from .simtime import AutoClock, ManualClock, doc_sample, fresh

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


# -- the token bucket ----------------------------------------------------------------------------------------------

def test_token_bucket_grants_burst_then_one_per_interval_in_simulated_time():
    clock = AutoClock()
    bucket = TokenBucket(10.0, burst=5, clock=clock.now, sleep=clock.sleep)
    grant_times = []
    for _ in range(25):
        assert bucket.acquire()
        grant_times.append(clock.now())
    # 5 saved-up tokens at t=0, then one every 1/10 s: the 25th at t = 20 / 10 = 2.0 s
    assert grant_times[:5] == [0.0] * 5
    assert grant_times[-1] == pytest.approx(2.0)
    gaps = [b - a for a, b in pairwise(grant_times[5:])]
    assert gaps == pytest.approx([0.1] * 19)
    # empty bucket: a timeout shorter than the wait fails after sleeping only the timeout
    before = clock.now()
    assert not bucket.acquire(timeout=0.04)
    assert clock.now() - before == pytest.approx(0.04)
    assert not bucket.try_acquire()
    clock.sleep(1.0)  # idle: the bucket refills, but never beyond burst
    assert bucket.available == pytest.approx(5.0)


def test_token_bucket_never_grants_more_than_burst_plus_rate_times_elapsed_across_threads():
    rate, burst, per_thread, threads = 400.0, 4, 60, 4
    bucket = TokenBucket(rate, burst=burst)  # real clock: this checks a bound, not a speed
    clock = bucket._clock
    lock = threading.Lock()
    grants: list[float] = []

    def take() -> None:
        for _ in range(per_thread):
            assert bucket.acquire(timeout=10.0)
            now = clock()
            with lock:
                grants.append(now)

    workers = [threading.Thread(target=take) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30.0)
    grants.sort()
    assert len(grants) == per_thread * threads
    # Every stretch [t_i, t_j] holds at most burst + rate * (t_j - t_i) grants (+1: the grant at t_i itself
    # was taken from tokens accrued before t_i). The timestamps are read after the grant, so they can only
    # stretch intervals, never shrink them below what the bucket measured.
    worst = max(j - i + 1 - rate * (grants[j] - grants[i]) for i in range(len(grants)) for j in range(i, len(grants)))
    assert worst <= burst + 1 + 1e-6, worst


def test_token_bucket_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)
    with pytest.raises(TypeError, match="rate"):
        TokenBucket("10")
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(10, burst=0.5)
    bucket = TokenBucket(10, burst=2)
    with pytest.raises(ValueError, match="tokens"):
        bucket.acquire(3)
    with pytest.raises(ValueError, match="timeout"):
        bucket.acquire(timeout=-1)


# -- the consumer --------------------------------------------------------------------------------------------------

RATE = 100.0  # messages per second the service may take
MAX_LENGTH = 400
TICK = 0.02  # simulated seconds per step of the test


def arrivals_per_second(t: float) -> float:
    if t < 1.0:
        return 50.0  # half the service rate: nothing queues
    if t < 2.0:
        return 1000.0  # the burst: 10x the service rate for one second
    return 0.0


def test_burst_of_ten_times_the_rate_is_queued_bounded_and_drained_at_the_rate(url, until):
    """Simulated time: the test moves the consumer's clock one tick at a time and sends that tick's arrivals."""
    queue = fresh("emails")
    clock = ManualClock()
    lock = threading.Lock()
    starts: list[float] = []
    active = [0, 0]  # now, peak

    def handler(message: ringbus.Message) -> None:
        with lock:
            starts.append(clock.now())
            active[0] += 1
            active[1] = max(active[1], active[0])
        with lock:
            active[0] -= 1

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue, max_length=MAX_LENGTH)
        consumer = LevelledConsumer(url, queue, handler, rate=RATE, burst=5, concurrency=4,
                                    clock=clock.now, sleep=clock.sleep).start()
        pending = accepted = fulls = 0
        carry = 0.0
        depths: list[tuple[float, int]] = []
        try:
            while True:
                t = clock.now()
                carry += arrivals_per_second(t) * TICK
                pending += int(carry + 1e-9)
                carry -= int(carry + 1e-9)
                while pending:
                    try:
                        bus.send(queue, b"order-confirmation")
                    except ringbus.Full:
                        fulls += 1  # the producer holds the rest back until the next tick
                        break
                    accepted += 1
                    pending -= 1
                depths.append((t, bus.queue_stats(queue).depth))
                if t >= 2.0 and pending == 0 and consumer.stats().processed == accepted:
                    break
                assert t < 60.0, "the queue did not drain within 60 simulated seconds"
                clock.advance(TICK)
                # Let the consumer do all it may at this time: it ends asleep until a later time (out of
                # tokens), or idle with everything handled.
                until(lambda done=accepted: clock.sleepers() > 0 or consumer.stats().processed == done,
                      "the consumer to catch up with the simulated clock")
        finally:
            consumer.stop(timeout=0)  # stop taking work, then wake it if it sleeps in simulated time
            clock.close()
            consumer.stop()
        stats = consumer.stats()
        final_depth = bus.queue_stats(queue).depth

    total = int(sum(arrivals_per_second(i * TICK) * TICK for i in range(int(2.0 / TICK))) + 0.5)
    assert accepted == total == 1050
    assert stats.processed == len(starts) == 1050 and final_depth == 0  # everything queued was drained
    peak_depth = max(depth for _, depth in depths)
    assert peak_depth == MAX_LENGTH  # the burst filled the queue up to its bound ...
    assert all(depth <= MAX_LENGTH for _, depth in depths)  # ... and never beyond
    assert fulls > 0  # the producer was told to slow down instead
    assert active[1] <= 4 and stats.peak_concurrency <= 4

    # While a backlog waited, the service saw the rate limit, within 5% (simulated seconds).
    backlog = [t for t, depth in depths if depth > 0]
    begin, end = 1.2, backlog[-1]
    assert end - begin > 5.0  # a long stretch: the burst took over 5 s to drain at 100/s
    busy = [s for s in starts if begin <= s < end]
    rate = len(busy) / (end - begin)
    print(f"\n{url}: peak depth {peak_depth}/{MAX_LENGTH}, {fulls} full sends held back, drained at "
          f"t={end + TICK:.2f} s; rate under backlog {rate:.1f}/s (limit {RATE:g}); peak concurrency {active[1]}")
    assert abs(rate - RATE) <= 0.05 * RATE
    # and never more than burst + rate * t in any window of t simulated seconds
    worst = max(j - i + 1 - RATE * (starts[j] - starts[i]) for i in range(len(starts))
                for j in range(i, min(len(starts), i + 200)))
    assert worst <= 5 + 1 + 1e-6


def test_concurrency_never_exceeds_the_limit_and_reaches_it(url, until):
    queue = fresh("jobs")
    limit, n = 3, 150
    lock = threading.Lock()
    active = [0, 0]  # now, peak
    full_house = threading.Event()
    handled: list[str] = []

    def handler(message: ringbus.Message) -> None:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
            if active[0] == limit:
                full_house.set()
        full_house.wait(10.0)  # the first ones hold their slots until every slot is taken
        threading.Event().wait(0.001)
        with lock:
            active[0] -= 1
            handled.append(message.id)

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue, max_length=1000)
        ids = bus.send_many(queue, [b"%d" % i for i in range(n)])
        with LevelledConsumer(url, queue, handler, rate=1e6, burst=100, concurrency=limit, prefetch=10) as consumer:
            until(lambda: len(handled) == n, "every message handled")
        stats = consumer.stats()
    assert sorted(handled) == sorted(ids)
    assert full_house.is_set()
    assert active[1] == limit == stats.peak_concurrency  # reached, never exceeded
    assert stats.processed == n and stats.in_flight == 0


def test_failing_message_is_retried_then_dead_lettered_while_the_rest_flow(url, until):
    queue = fresh("mail")
    attempts: dict[bytes, int] = {}

    def handler(message: ringbus.Message) -> None:
        body = bytes(message.body)
        attempts[body] = attempts.get(body, 0) + 1
        if body == b"bad-address":
            raise ValueError("mailbox does not exist")

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue, max_attempts=3)
        bus.send_many(queue, [b"a", b"bad-address", b"b", b"c"])
        with LevelledConsumer(url, queue, handler, rate=1000, concurrency=2, max_attempts=3,
                              retry=RetryPolicy(base=0.01, jitter=False)) as consumer:
            until(lambda: consumer.stats().dead_lettered == 1 and consumer.stats().processed == 3,
                       "3 processed and 1 dead-lettered")
        dead = bus.receive(f"{queue}.dlq", timeout=5.0)
        stats = consumer.stats()
    assert attempts == {b"a": 1, b"bad-address": 3, b"b": 1, b"c": 1}
    assert (stats.processed, stats.failed, stats.retried, stats.dead_lettered) == (3, 3, 2, 1)
    assert bytes(dead.body) == b"bad-address"
    assert "mailbox does not exist" in dead.headers["ringbus-error"]


def test_stop_loses_nothing(url, until):
    """Stopped while messages wait for tokens: those handled are acked, the others are back in the queue."""
    queue = fresh("slow")
    clock = ManualClock()
    handled: list[str] = []
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        ids = bus.send_many(queue, [b"%d" % i for i in range(20)])
        consumer = LevelledConsumer(url, queue, lambda m: handled.append(m.id), rate=10, burst=3,
                                    concurrency=2, clock=clock.now, sleep=clock.sleep).start()
        until(lambda: len(handled) == 3 and clock.sleepers() > 0, "the burst handled, then a wait for tokens")
        clock.advance(0.2)  # two more tokens
        until(lambda: len(handled) == 5 and clock.sleepers() > 0, "two more handled")
        consumer.stop(timeout=0)
        clock.close()
        consumer.stop()
        rest = []
        while (message := bus.receive(queue, timeout=0.5)) is not None:
            rest.append(message.id)
            message.ack()
    assert sorted(handled) == sorted(ids[:5])
    assert sorted(rest) == sorted(ids[5:])  # nothing lost, nothing handled twice
    assert consumer.stats().processed == 5


def test_consumer_start_fails_for_an_undeclared_queue_and_bad_arguments(url):
    with pytest.raises(ringbus.NotFound):
        LevelledConsumer(url, fresh("missing"), print).start(timeout=10.0)
    with pytest.raises(ValueError, match="concurrency"):
        LevelledConsumer(url, "q", print, concurrency=0)
    with pytest.raises(TypeError, match="handler"):
        LevelledConsumer(url, "q", None)
    with pytest.raises(ValueError, match="rate"):
        LevelledConsumer(url, "q", print, rate=-5)


# -- the producer ----------------------------------------------------------------------------------------------------

def test_producer_backs_off_while_the_queue_is_full_then_sends(url):
    queue = fresh("bounded")
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue, max_length=3)
        bus.send_many(queue, [b"0", b"1", b"2"])
        clock = AutoClock()
        drained: list[bytes] = []
        calls = [0]

        def sleep(seconds: float) -> None:  # the consumer catches up while the producer waits (on the 3rd wait)
            clock.sleep(seconds)
            calls[0] += 1
            if calls[0] == 3:
                message = bus.receive(queue, timeout=5.0)
                drained.append(bytes(message.body))
                message.ack()

        producer = LevelledProducer(bus, queue, retry=RetryPolicy(base=0.01, jitter=False), clock=clock.now,
                                    sleep=sleep)
        producer.send(b"3")
        assert (producer.sent, producer.backoffs, drained) == (1, 3, [b"0"])
        assert clock.slept == pytest.approx(0.01 + 0.02 + 0.04)  # exponential backoff
        assert bus.queue_stats(queue).depth == 3

        clock = AutoClock()
        stuck = LevelledProducer(bus, queue, timeout=2.0, clock=clock.now, sleep=clock.sleep,
                                 retry=RetryPolicy(base=0.1, max_delay=0.5, jitter=False))
        with pytest.raises(ringbus.Full, match="stayed full"):
            stuck.send(b"4")
        assert stuck.gave_up == 1 and clock.now() == pytest.approx(2.0)
        assert bus.queue_stats(queue).depth == 3  # the bound held


# -- the example ------------------------------------------------------------------------------------------------------

def test_example_runs_and_plots(tmp_path):
    out = tmp_path / "levelling.png"
    proc = run_python(str(ROOT / "examples" / "load_leveling.py"), "--burst-seconds", "0.2", "--out", str(out),
                      timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "drained" in proc.stdout, proc.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plot saved to {out}" in proc.stdout


def test_doc_sample_runs(capsys):
    exec(compile(doc_sample("load-leveling.md", "load-leveling-sample"), "load-leveling.md", "exec"), {})
    assert capsys.readouterr().out.startswith("20 emails,")


def test_bench_cases_scale_down_and_memory_contenders_run():
    from ringbus.bench import leveling

    cases = leveling.cases(scale=0.0001)
    assert [case.n for case in cases] == [30] * 6 and all(case.peers for case in cases)
    assert 0.0 < leveling.levelled_run(f"memory://{fresh('bench')}", 30) < 60.0
    assert 0.0 < leveling.weighted_run(f"memory://{fresh('bench')}", 30) < 60.0
    assert 0.0 < leveling.priority_run(f"memory://{fresh('bench')}", 30) < 60.0
