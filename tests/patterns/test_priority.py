"""Priority queue, both designs: urgent messages wait far less, and the others still finish (aging).

Waits are measured in logical time - how many messages were handled between a message's send and its
handling - so the numbers hold on a loaded machine. Each test keeps a high-priority backlog of constant size
while it runs: the handler sends a new high-priority message for each one it handles.
"""

from __future__ import annotations

import math
import threading
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

import ringbus
from ringbus.patterns import RetryPolicy
from ringbus.patterns.priority import (
    AGED_HEADER,
    LEVEL_HEADER,
    PRIOR_ATTEMPTS_HEADER,
    SENT_AT_HEADER,
    PriorityConsumer,
    PrioritySender,
    WeightedConsumer,
    aging_queue,
    declare_priority_queue,
)

from .bus_fixtures import run_python
from .simtime import doc_sample, fresh

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def p99(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


class Backlog:
    """Handles messages in logical time and keeps ``size`` high-priority messages waiting while ``sustain()``.

    A message's body is ``b"<level>:<handled count when it was sent>"``; its wait is the handled count at its
    handling minus that.
    """

    def __init__(self, url: str, send_high: Any, size: int) -> None:
        self.url = url
        self.send_high = send_high  # send_high(bus, body)
        self.size = size
        self.handled = 0
        self.waits: dict[str, list[int]] = {}
        self.order: list[str] = []
        self.aged: list[int] = []  # AGED header of each low-priority message handled
        self.highs_waiting_at_low: list[int] = []
        self.sustain = True
        self.highs_sent = self.highs_handled = 0
        self.done = threading.Event()
        self.expect_low = 0
        self._local = threading.local()
        self._buses: list[ringbus.Bus] = []

    def bus(self) -> ringbus.Bus:
        bus = getattr(self._local, "bus", None)
        if bus is None:
            bus = self._local.bus = ringbus.connect(self.url)
            self._buses.append(bus)
        return bus

    def body(self, level: str) -> bytes:
        return b"%s:%d" % (level.encode(), self.handled)

    def handler(self, message: ringbus.Message) -> None:
        level, sent_at = bytes(message.body).split(b":")
        name = level.decode()
        self.waits.setdefault(name, []).append(self.handled - int(sent_at))
        self.order.append(name)
        self.handled += 1
        if name == "high":
            self.highs_handled += 1
            if self.sustain:
                self.send_high(self.bus(), self.body("high"))
                self.highs_sent += 1
        elif name == "low":
            self.aged.append(int(message.headers.get(AGED_HEADER) or 0))
            self.highs_waiting_at_low.append(self.highs_sent - self.highs_handled)
            if len(self.waits["low"]) == self.expect_low:
                self.sustain = False
        if not self.sustain and self.highs_handled == self.highs_sent:
            self.done.set()

    def run(self, consumer: Any) -> Any:
        """Start ``consumer``, wait until the run is done, stop it; its stats."""
        consumer.start()
        try:
            assert self.done.wait(60.0), f"lows handled: {len(self.waits.get('low', []))} of {self.expect_low}"
        finally:
            consumer.stop()
            for bus in self._buses:
                bus.close()
        return consumer.stats()


# -- design (a): one queue, priorities, aging through the broker's ttl -----------------------------------------------

def test_one_queue_high_p99_far_below_low_and_aged_lows_finish_under_a_sustained_backlog(url):
    queue = fresh("otp")
    highs, lows = 10, 10
    with ringbus.connect(url) as bus:
        sender = PrioritySender(bus, queue, levels={"high": 2, "low": 0}, max_wait=1.5)
        sender.declare()
        backlog = Backlog(url, lambda own, body: PrioritySender(own, queue, levels={"high": 2, "low": 0})
                          .send(body, "high"), highs)
        backlog.expect_low = lows
        for _ in range(highs):
            sender.send(backlog.body("high"), "high")
        backlog.highs_sent = highs
        for _ in range(lows):
            sender.send(backlog.body("low"), "low")
        stats = backlog.run(PriorityConsumer(url, queue, backlog.handler, levels={"high": 2, "low": 0}))

    high, low = backlog.waits["high"], backlog.waits["low"]
    print(f"\n{url}: {len(high)} high (p99 wait {p99(high)} messages), {len(low)} low (p99 {p99(low)}, max "
          f"{max(low)}); aged {stats.aged}")
    assert len(low) == lows and stats.by_level == {"high": len(high), "low": lows}
    assert p99(low) >= 5 * p99(high)
    # Bounded: every low message was raised exactly once - after max_wait - and handled while the high
    # backlog was still full (without aging none of them would have been handled before it ran dry).
    assert backlog.aged == [1] * lows and stats.aged == lows
    assert min(backlog.highs_waiting_at_low) == highs


def test_one_queue_failures_and_own_ttl_go_to_the_dead_letter_queue_not_back(url):
    queue = fresh("jobs")
    release = threading.Event()
    seen: list[bytes] = []

    def handler(message: ringbus.Message) -> None:
        body = bytes(message.body)
        seen.append(body)
        if body == b"blocker":
            release.wait(10.0)  # holds the only consumer while the low message ages and then expires
        if body == b"poison":
            raise ValueError("cannot render report")

    with ringbus.connect(url) as bus:
        sender = PrioritySender(bus, queue, max_wait={"low": 0.1})
        sender.declare(max_attempts=2)
        sender.send(b"blocker", "high")
        consumer = PriorityConsumer(url, queue, handler, retry=RetryPolicy(base=0.01, jitter=False),
                                    max_attempts=2).start()
        try:
            sender.send(b"short-lived", "low", ttl=0.3)  # ages at 0.1 s, then its own ttl ends at 0.3 s
            expired = bus.receive(f"{queue}.dlq", timeout=10.0)
            release.set()
            sender.send(b"poison", "normal")
            failed = bus.receive(f"{queue}.dlq", timeout=10.0)
        finally:
            release.set()
            consumer.stop()
        stats = consumer.stats()
        assert bus.queue_stats(aging_queue(queue)).depth == 0

    assert bytes(expired.body) == b"short-lived"
    assert expired.headers["ringbus-dead-reason"] == "expired" and expired.headers[AGED_HEADER] == 1
    assert bytes(failed.body) == b"poison" and "cannot render report" in failed.headers["ringbus-error"]
    assert seen == [b"blocker", b"poison", b"poison"]  # the expired one was never handled
    assert (stats.processed, stats.failed, stats.dead_lettered, stats.aged) == (1, 2, 1, 1)


# -- design (b): several queues, weights -------------------------------------------------------------------------------

def test_weighted_queues_high_p99_far_below_low_and_low_wait_bounded_by_the_weights(url):
    prefix = fresh("jobs")
    names = {"high": f"{prefix}.high", "normal": f"{prefix}.normal", "low": f"{prefix}.low"}
    weights = {names["high"]: 8, names["normal"]: 3, names["low"]: 1}
    highs, normals, lows = 24, 30, 40
    with ringbus.connect(url) as bus:
        sender = PrioritySender(bus, names)
        sender.declare()
        backlog = Backlog(url, lambda own, body: own.send(names["high"], body), highs)
        backlog.expect_low = lows
        for level, n in (("high", highs), ("normal", normals), ("low", lows)):
            for _ in range(n):
                sender.send(backlog.body(level), level)
        backlog.highs_sent = highs
        stats = backlog.run(WeightedConsumer(url, weights, backlog.handler))

    high, low = backlog.waits["high"], backlog.waits["low"]
    print(f"\n{url}: high p99 wait {p99(high)} messages, normal max {max(backlog.waits['normal'])}, low p99 "
          f"{p99(low)} (max {max(low)})")
    assert len(low) == lows and len(backlog.waits["normal"]) == normals
    assert p99(low) >= 5 * p99(high)
    # While all three have work, every 12 turns are 8 high, 3 normal, 1 low:
    first_12 = backlog.order[:12]
    assert (first_12.count("high"), first_12.count("normal"), first_12.count("low")) == (8, 3, 1)
    # so a low message waits at most lows x 12 turns (weights 8:3:1), with the high backlog never empty.
    assert max(low) <= lows * 12
    assert min(backlog.highs_waiting_at_low) == highs
    assert stats.by_level[names["low"]] == lows and stats.aged == 0


def test_weighted_max_wait_gives_a_starved_queue_a_turn(url):
    """Weights 1000:1 would serve one low in 1001 turns; max_wait (simulated: one second per message) says 10."""
    prefix = fresh("starve")
    high_q, low_q = f"{prefix}.high", f"{prefix}.low"
    highs, lows = 20, 10
    results = {}
    for max_wait in (None, 10.0):
        with ringbus.connect(url) as bus:
            for name in (high_q, low_q):
                bus.declare_queue(f"{name}.{max_wait}")
            backlog = Backlog(url, lambda own, body, q=f"{high_q}.{max_wait}": own.send(q, body), highs)
            backlog.expect_low = lows
            bus.send_many(f"{high_q}.{max_wait}", [backlog.body("high") for _ in range(highs)])
            bus.send_many(f"{low_q}.{max_wait}", [backlog.body("low") for _ in range(lows)])
            backlog.highs_sent = highs
            if max_wait is None:  # no guard: stop the backlog after 300 highs and see how many lows got through
                original = backlog.handler

                def capped(message: ringbus.Message, original: Any = original, backlog: Backlog = backlog) -> None:
                    original(message)
                    if backlog.highs_sent >= 300:
                        backlog.sustain = False
                        if backlog.highs_handled == backlog.highs_sent:
                            backlog.done.set()

                handler = capped
            else:
                handler = backlog.handler
            consumer = WeightedConsumer(url, {f"{high_q}.{max_wait}": 1000, f"{low_q}.{max_wait}": 1}, handler,
                                        max_wait=max_wait, clock=lambda b=backlog: float(b.handled))
            results[max_wait] = (backlog, backlog.run(consumer))

    unguarded, _ = results[None]
    lows_during_backlog = unguarded.order[:300].count("low")
    assert unguarded.highs_handled >= 300 and lows_during_backlog == 0  # starved while highs kept coming

    guarded, stats = results[10.0]
    turns = [i for i, name in enumerate(guarded.order) if name == "low"]
    gaps = [b - a for a, b in pairwise([-1, *turns])]
    print(f"\n{url}: with max_wait=10 (simulated s, 1 per message) lows at turns {turns}")
    assert len(turns) == lows and max(gaps) <= 11 and stats.aged >= lows - 1
    assert min(guarded.highs_waiting_at_low) == highs


# -- sender, arguments, the example ------------------------------------------------------------------------------

def test_sender_stamps_level_and_time_and_routes_by_level(url):
    queue = fresh("single")
    prefix = fresh("multi")
    with ringbus.connect(url) as bus:
        single = PrioritySender(bus, queue, max_wait=30.0, clock=lambda: 1000.0)
        single.declare()
        single.send(b"r", "low", headers={"report": "sales"})
        single.send(b"o", "high")
        first, second = bus.receive(queue, timeout=5.0), bus.receive(queue, timeout=5.0)
        assert (bytes(first.body), first.priority, first.headers[LEVEL_HEADER]) == (b"o", 2, "high")
        assert (bytes(second.body), second.priority, second.headers["report"]) == (b"r", 0, "sales")
        assert second.headers[SENT_AT_HEADER] == 1000.0 and PRIOR_ATTEMPTS_HEADER not in second.headers
        first.ack()
        second.ack()
        assert single.max_wait == {"normal": 30.0, "low": 30.0}  # the top level never ages

        multi = PrioritySender(bus, {"otp": f"{prefix}.otp", "report": f"{prefix}.report"})
        multi.declare()
        multi.send(b"123456", "otp")
        got = bus.receive(f"{prefix}.otp", timeout=5.0)
        assert bytes(got.body) == b"123456" and got.headers[LEVEL_HEADER] == "otp"
        got.ack()
        with pytest.raises(ValueError, match="unknown level"):
            multi.send(b"x", "urgent")


def test_bad_arguments_are_refused_with_their_name(url):
    with ringbus.connect(url) as bus:
        with pytest.raises(ValueError, match="levels and max_wait"):
            PrioritySender(bus, {"high": "a"}, max_wait=1.0)
        with pytest.raises(ValueError, match="distinct"):
            PrioritySender(bus, "q", levels={"a": 1, "b": 1})
        with pytest.raises(ValueError, match="max_wait"):
            PrioritySender(bus, "q", max_wait=-1)
        with pytest.raises(ValueError, match="dead_letter"):
            declare_priority_queue(bus, "q", dead_letter="x")
    with pytest.raises(ValueError, match="aged_priority"):
        PriorityConsumer(url, "q", print, aged_priority=-1)
    with pytest.raises(ValueError, match="weight"):
        WeightedConsumer(url, {"a": 0}, print)
    with pytest.raises(TypeError, match="queues"):
        WeightedConsumer(url, [], print)
    with pytest.raises(ringbus.NotFound):
        PriorityConsumer(url, fresh("undeclared"), print).start(timeout=10.0)


def test_example_prints_waits_per_class():
    proc = run_python(str(ROOT / "examples" / "priority_jobs.py"), "--seconds", "1.5", timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "p99" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("fifo", "priorities", "weighted"))]
    assert len(rows) == 6, proc.stdout


def test_doc_sample_runs(capsys):
    exec(compile(doc_sample("priority-queue.md", "priority-sample"), "priority-queue.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["[b'code 123456 for ada', b'monthly sales']",
                                                    "{'auth.otp': 1, 'auth.report': 1}"]
