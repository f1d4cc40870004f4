"""Part 5: consumers SIGKILLed before their ack, and settles that come too late.

Consumers are forked children of one peer process (``_peers.py consumers``), which replaces each one that
dies. A consumer SIGKILLs itself on the first delivery of every tenth message (body ``die-...``), holding
it unacked; the queue's visibility timeout is 2 s. Promise: nothing is lost, each such message comes back
with ``attempts == 1``, every other one is delivered once. Figure: redelivery time (the killed delivery to
the next one). A stale settle - after the lease ran out, or from before a broker restart - must not touch
the message's new delivery.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringbus
from ringbus.backends.broker import BrokerBus
from ringbus.bench._harness import percentile
from ringbus.broker.process import BrokerProcess
from ringbus.broker.server import Broker

from . import figures
from ._peers import finish, peer, read_lines

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

VISIBILITY = 2.0
WAIT = 60.0  # bound on waits that end much sooner; a failing test takes this long


def _until(condition: object, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path / "data", f"ipc://{tmp_path}/broker.sock") as running:
        yield running


def _kill_consumers(broker: BrokerProcess, records: Path, total: int, consumers: int, rate: float) -> None:
    """``total`` messages sent at ``rate`` a second (paced, so that a redelivery measures the lease and the
    pick-up, not a backlog it would queue behind), every tenth one fatal to its first consumer."""
    url = broker.endpoint
    sent: dict[str, bytes] = {}
    depth_max = 0
    with ringbus.connect(url) as bus:
        bus.declare_queue("work", visibility_timeout=VISIBILITY, max_attempts=5)
        with peer("consumers", url, "work", records, consumers) as child:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            batch = 20
            started = time.monotonic()
            for start in range(0, total, batch):
                bodies = [(b"die-%d" if i % 10 == 0 else b"ok-%d") % i for i in range(start, min(total, start + batch))]
                sent.update(zip(bus.send_many("work", bodies), bodies, strict=True))
                depth_max = max(depth_max, bus.queue_stats("work").depth)
                time.sleep(max(0.0, started + (start + batch) / rate - time.monotonic()))
            _until(lambda: bus.queue_stats("work").acked >= total, f"{total} acked")
            out = finish(child)
        stats = bus.queue_stats("work")
    deaths = int(out.split()[-1])
    deliveries: dict[str, list[tuple[int, float]]] = {}
    acked: list[str] = []
    for fields in read_lines(records):
        if fields[0] == "D":
            deliveries.setdefault(fields[1], []).append((int(fields[2]), float(fields[3])))
        elif fields[0] == "A":
            acked.append(fields[1])
    dying = {mid for mid, body in sent.items() if body.startswith(b"die-")}
    redelivery = []
    for mid in dying:
        (first, t0), (second, t1) = sorted(deliveries[mid])[:2]
        assert (first, second) == (0, 1), f"{mid}: attempts {first}, {second}"
        redelivery.append(t1 - t0)
    lost = set(sent) - set(acked)
    duplicates = len(acked) - len(set(acked))
    figures.record("consumer_kill", messages=total, killed=deaths, visibility_timeout_s=VISIBILITY, lost=len(lost),
                   send_rate=rate, depth_max=depth_max,
                   duplicates=duplicates, redelivery_s_p50=round(percentile(redelivery, 50), 3),
                   redelivery_s_p99=round(percentile(redelivery, 99), 3),
                   redelivery_s_max=round(max(redelivery), 3))
    print(f"{total} messages, {deaths} consumers SIGKILLed before the ack: lost {len(lost)}, acked twice "
          f"{duplicates}, redelivery p50 {percentile(redelivery, 50):.3f} s p99 {percentile(redelivery, 99):.3f} s")
    assert not lost
    assert deaths == len(dying)  # one consumer died for each die- message, on its first delivery only
    assert duplicates == 0  # ... and every message was acked once: the die- ones on their second delivery
    for mid, got in deliveries.items():  # attempts counted right: ok- once (0), die- twice (0 then 1)
        assert sorted(a for a, _ in got) == ([0, 1] if mid in dying else [0]), mid
    assert all(r >= VISIBILITY * 0.9 for r in redelivery)  # its lease ran out first: no early redelivery
    assert (stats.acked, stats.depth, stats.in_flight, stats.dead_lettered) == (total, 0, 0, 0)
    assert stats.redelivered == len(dying)


def test_consumers_killed_before_ack_lose_nothing(broker: BrokerProcess, tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    _kill_consumers(broker, records, total=1_000, consumers=4, rate=200.0)


@pytest.mark.full
def test_consumers_killed_before_ack_lose_nothing_10k(broker: BrokerProcess, tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    _kill_consumers(broker, records, total=10_000, consumers=4, rate=200.0)


# -- stale settles -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("settle", ["ack", "nack", "reject"])
def test_a_settle_after_the_lease_ran_out_leaves_the_redelivery_alone(tmp_path: Path, settle: str) -> None:
    with Broker(tmp_path / "data", "tcp://127.0.0.1:0") as broker:
        with ringbus.connect(broker.endpoint) as late, ringbus.connect(broker.endpoint) as other:
            late.declare_queue("q", visibility_timeout=VISIBILITY)
            sent = late.send("q", b"slow work")
            first = late.receive("q", timeout=5)
            assert first is not None and first.id == sent
            again = other.receive("q", timeout=WAIT)  # after the lease ran out
            assert again is not None and again.id == sent and again.attempts == 1
            getattr(first, settle)()  # stale: its delivery is over
            stats = late.queue_stats("q")  # a round trip: the settle before it was applied
            assert (stats.in_flight, stats.depth, stats.acked, stats.dead_lettered) == (1, 0, 0, 0)
            assert broker.counters["stale_settles"] == 1
            again.ack()  # the redelivery is still the other consumer's to settle
            stats = other.queue_stats("q")
            assert (stats.in_flight, stats.depth, stats.acked) == (0, 0, 1)
            assert broker.counters["stale_settles"] == 1


def test_an_ack_held_across_a_broker_restart_is_stale(tmp_path: Path) -> None:
    """Delivery tags begin again at 1 in a restarted broker: one held from before must not ack another's."""
    endpoint = f"ipc://{tmp_path}/broker.sock"
    with BrokerProcess(tmp_path / "data", endpoint) as broker:
        with BrokerBus(endpoint, timeout=5.0) as old:
            old.declare_queue("q", visibility_timeout=600.0)
            old.send("q", b"m")
            held = old.receive("q", timeout=5)
            assert held is not None
            old.queue_stats("q")  # the delivery was committed with its turn
            broker.kill()
            broker = BrokerProcess(broker.data, endpoint).start()
            try:
                with BrokerBus(endpoint, timeout=5.0) as new:
                    again = new.receive("q", timeout=WAIT)
                    assert again is not None and again.id == held.id and again.attempts == 1
                    held.ack()
                    old.queue_stats("q")
                    stats = new.queue_stats("q")
                    assert (stats.in_flight, stats.acked) == (1, 0)  # the new delivery is untouched
                    assert new.broker_stats()["counters"]["stale_settles"] == 1
                    again.ack()
                    assert new.queue_stats("q").acked == 1
            finally:
                broker.kill()
