"""Part 7: slow consumers and frozen subscribers must cost bounded memory and never stall anyone else.

The broker is ``ringbus broker`` in a child process, so its RSS is its own. A producer offers messages at ten
times the rate its consumer can take them, through :class:`LevelledProducer` (it waits while the bounded
queue is full: back-pressure, not loss). Promise: the queue's depth stays within ``max_length``, the
consumer's in-flight within its prefetch, nothing is dropped, and the broker's RSS stops growing once warm.
A subscriber frozen with SIGSTOP must not slow the publisher nor starve the other subscribers; what it
cannot take is dropped for it and counted. Figures: RSS growth (MiB/min after warm-up), depth and
in-flight maxima, publish p50/p99 while a subscriber is frozen.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

import ringbus
from ringbus.bench._harness import percentile
from ringbus.broker.process import BrokerProcess
from ringbus.patterns import RetryPolicy
from ringbus.patterns.load_leveling import LevelledProducer

from . import figures
from ._peers import growth_per_minute, ms, peer, proc_status_mib

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WAIT = 60.0
MAX_LENGTH = 1_000
PREFETCH = 16
CONSUME_S = 0.004  # the consumer's work per message: at most 250 a second
BODY = bytes(1024)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path / "data", f"ipc://{tmp_path}/broker.sock") as running:
        yield running


def _slow_consumer(broker: BrokerProcess, seconds: float, warm_up: float) -> None:
    url = broker.endpoint
    accepted: list[str] = []
    consumed: list[str] = []
    stop_producing = threading.Event()
    stop_consuming = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            with ringbus.connect(url) as bus:
                producer = LevelledProducer(bus, "levelled", retry=RetryPolicy(base=0.002, max_delay=0.02),
                                            timeout=WAIT)
                rate = 10 / CONSUME_S  # offered: ten times what the consumer can take
                started = time.monotonic()
                while not stop_producing.is_set():
                    accepted.append(producer.send(BODY))
                    time.sleep(max(0.0, started + len(accepted) / rate - time.monotonic()))
                producer_backoffs.append(producer.backoffs)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def consume() -> None:
        try:
            with ringbus.connect(url) as bus:
                while not stop_consuming.is_set():
                    for message in bus.consume("levelled", prefetch=PREFETCH, timeout=0.5):
                        time.sleep(CONSUME_S)
                        message.ack()
                        consumed.append(message.id)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    producer_backoffs: list[int] = []
    with ringbus.connect(url) as bus:
        bus.declare_queue("levelled", max_length=MAX_LENGTH, overflow="reject")
        threads = [threading.Thread(target=produce, daemon=True), threading.Thread(target=consume, daemon=True)]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        rss: list[tuple[float, float]] = []
        depth_max = in_flight_max = 0
        while (now := time.monotonic() - started) < seconds and not errors:
            stats = bus.queue_stats("levelled")
            depth_max, in_flight_max = max(depth_max, stats.depth), max(in_flight_max, stats.in_flight)
            if now >= warm_up:
                rss.append((now, proc_status_mib(broker.pid)))
            time.sleep(0.25)
        stop_producing.set()
        threads[0].join(WAIT)
        deadline = time.monotonic() + WAIT
        while len(consumed) < len(accepted) and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        stop_consuming.set()
        threads[1].join(WAIT)
        stats = bus.queue_stats("levelled")
    assert not errors, errors
    offered_rate, taken_rate = len(accepted) / seconds, len(consumed) / seconds
    growth = growth_per_minute(rss)
    figures.record("slow_consumer", seconds=seconds, warm_up_s=warm_up, rss_mib_per_min=round(growth, 2),
                   rss_mib_start=round(rss[0][1], 1), rss_mib_end=round(rss[-1][1], 1), depth_max=depth_max,
                   max_length=MAX_LENGTH, in_flight_max=in_flight_max, prefetch=PREFETCH,
                   producer_backoffs=producer_backoffs[0], accepted=len(accepted), consumed=len(consumed),
                   consumer_per_s=round(taken_rate, 1), dropped=stats.dead_lettered + stats.expired)
    print(f"{seconds:g} s: accepted {len(accepted)} ({offered_rate:.0f}/s), consumed {len(consumed)}, "
          f"{producer_backoffs[0]} producer back-offs, depth max {depth_max}, in flight max {in_flight_max}, "
          f"broker RSS {rss[0][1]:.1f} -> {rss[-1][1]:.1f} MiB ({growth:+.2f} MiB/min after {warm_up:g} s)")
    assert producer_backoffs[0] > 0  # the producer was faster and was held back
    assert depth_max <= MAX_LENGTH
    assert in_flight_max <= PREFETCH
    assert sorted(consumed) == sorted(accepted)  # nothing dropped, nothing twice
    assert (stats.depth, stats.in_flight, stats.dead_lettered, stats.expired) == (0, 0, 0, 0)
    assert rss[-1][1] - rss[0][1] < 64.0  # sanity only (the slope is the figure): a leak per message shows


def test_producer_ten_times_faster_than_its_consumer(broker: BrokerProcess) -> None:
    _slow_consumer(broker, seconds=10.0, warm_up=3.0)


@pytest.mark.full
def test_producer_ten_times_faster_than_its_consumer_for_a_minute(broker: BrokerProcess) -> None:
    _slow_consumer(broker, seconds=60.0, warm_up=10.0)


def _frozen_subscriber(tmp_path: Path, total: int, rate: float) -> None:
    """Three subscribers of ``ticks.#``; the first is SIGSTOPped for the middle three fifths of the publishing.

    The broker's heartbeat is long enough that a session lives through the freeze (it ends after three silent
    heartbeats): the frozen subscriber keeps its subscription, so its count of drops is exact.
    """
    endpoint = f"ipc://{tmp_path}/broker.sock"
    heartbeat = max(2.0, total / rate)
    # No retention of publications for replay: the broker's RSS growth is then what the frozen subscriber costs.
    extra = ["--peer-hwm", "1000", "--retention-mb", "0"]
    with BrokerProcess(tmp_path / "data", endpoint, heartbeat=heartbeat, extra=extra) as broker:
        with ExitStack() as stack:
            done = tmp_path / "published"  # created once every publication was confirmed
            subscribers = [stack.enter_context(peer("subscriber", endpoint, "ticks.#", total, done))
                           for _ in range(3)]
            for child in subscribers:
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            frozen = subscribers[0]
            rss_before = proc_status_mib(broker.pid)
            before: list[float] = []
            during: list[float] = []
            with ringbus.connect(endpoint) as bus:
                started = time.monotonic()
                for seq in range(total):
                    if seq == total // 5:
                        frozen.send_signal(signal.SIGSTOP)
                    elif seq == total * 4 // 5:
                        frozen.send_signal(signal.SIGCONT)
                    t0 = time.monotonic()
                    bus.publish("ticks.eu", BODY, headers={"seq": seq})
                    (during if total // 5 <= seq < total * 4 // 5 else before).append(time.monotonic() - t0)
                    time.sleep(max(0.0, started + (seq + 1) / rate - time.monotonic()))
            rss_frozen = proc_status_mib(broker.pid)
            done.touch()
            outs = [child.communicate(timeout=WAIT)[0].split() for child in subscribers]
    # "got G dropped D in_order 0|1"
    (got_f, dropped_f, order_f), *live = [(int(o[1]), int(o[3]), o[5] == "1") for o in outs]
    figures.record("frozen_subscriber", published=total, rate=rate, publish_ms_p50=ms(percentile(during, 50)),
                   publish_ms_p99=ms(percentile(during, 99)), publish_ms_p99_unfrozen=ms(percentile(before, 99)),
                   frozen_got=got_f, frozen_dropped=dropped_f, live_got=[g for g, _, _ in live],
                   broker_rss_growth_mib=round(rss_frozen - rss_before, 2))
    print(f"published {total}: publish p99 {ms(percentile(during, 99))} ms while one subscriber was frozen "
          f"({ms(percentile(before, 99))} ms otherwise); frozen one got {got_f}, dropped {dropped_f}; "
          f"the others got {[g for g, _, _ in live]}")
    for got, dropped, in_order in live:
        assert (got, dropped, in_order) == (total, 0, True)  # the others got everything, in order
    assert got_f + dropped_f == total and order_f  # the frozen one: what it missed is counted as dropped


def test_a_frozen_subscriber_stalls_nobody(tmp_path: Path) -> None:
    _frozen_subscriber(tmp_path, total=5_000, rate=1_000.0)


@pytest.mark.full
def test_a_frozen_subscriber_stalls_nobody_for_a_minute(tmp_path: Path) -> None:
    _frozen_subscriber(tmp_path, total=60_000, rate=1_000.0)
