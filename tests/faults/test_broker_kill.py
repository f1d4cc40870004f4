"""Part 1: kill -9 the broker at random moments while a producer sends durable messages with confirms.

The broker is ``ringbus broker`` in a child process, SIGKILLed and started again on the same data each time
the producer has had a random number of further sends confirmed (so the kill lands mid-send, mid-commit or
between sends). The producer resends with the message's id as ``dedup_id`` until it is confirmed, as an
application should after :class:`ringbus.PeerGone`. Promise: every confirmed message is delivered after the
last restart. Figures: lost, duplicates, recovery time (kill to the next confirm), confirm latency.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

import ringbus
from broker.test_recovery import _drain, _send_until_confirmed
from ringbus.backends.broker import BrokerBus
from ringbus.bench._harness import percentile
from ringbus.broker.process import BrokerProcess

from . import figures
from ._peers import ms

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


class _Killer(threading.Thread):
    """Kills the broker each time ``confirmed`` reaches the next random threshold, then starts it again."""

    def __init__(self, broker: BrokerProcess, thresholds: list[int], confirmed: list[str]) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.thresholds = thresholds
        self.confirmed = confirmed
        self.kills: list[float] = []  # monotonic time of each SIGKILL
        self.restarted: list[float] = []  # ... and of the broker listening again
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for threshold in self.thresholds:
                while len(self.confirmed) < threshold:
                    if self.stop.wait(0.001):
                        return
                self.kills.append(time.monotonic())
                self.broker.kill()
                self.broker = BrokerProcess(self.broker.data, self.broker.bind, fsync=self.broker.fsync).start()
                self.restarted.append(time.monotonic())
        except BaseException as exc:  # surfaced by the test
            self.error = exc


def _kill_while_sending(tmp_path: Path, total: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    endpoint = f"ipc://{tmp_path}/broker.sock"
    thresholds = sorted(rng.sample(range(total // 20, total - total // 20), kills))
    confirmed: list[str] = []
    confirmed_at: list[float] = []
    latencies: list[float] = []  # sends confirmed at the first try
    retried = 0
    killer = _Killer(BrokerProcess(tmp_path / "data", endpoint, fsync="batch").start(), thresholds, confirmed)
    try:
        with BrokerBus(endpoint, timeout=1.0) as bus:
            _send_until_confirmed(bus, "orders", None)
            killer.start()
            for i in range(total):
                message = ringbus.Message(b"order-%d" % i)
                started = time.monotonic()
                attempts = _send_until_confirmed(bus, "orders", message)
                done = time.monotonic()
                if attempts == 1:
                    latencies.append(done - started)
                retried += attempts - 1
                confirmed.append(message.id)
                confirmed_at.append(done)
        killer.join(120)
        assert killer.error is None, killer.error
        assert len(killer.kills) == kills
        received = _drain(endpoint, "orders")
    finally:
        killer.stop.set()
        killer.join(120)
        killer.broker.kill()
    ids = [m.id for m in received]
    lost = set(confirmed) - set(ids)
    duplicates = len(ids) - len(set(ids))
    # Recovery: from a kill to the first confirm after it (restart, reconnect and resend included).
    recovery = [next(t for t in confirmed_at if t > kill) - kill for kill in killer.kills]
    restart = [up - kill for kill, up in zip(killer.kills, killer.restarted, strict=True)]
    figures.record("broker_kill", messages=total, kills=kills, fsync="batch", lost=len(lost), duplicates=duplicates,
                   invented=len(set(ids) - set(confirmed)), sends_retried=retried,
                   recovery_s_max=round(max(recovery), 3), recovery_s_p50=round(percentile(recovery, 50), 3),
                   restart_s_p50=round(percentile(restart, 50), 3),
                   confirm_ms_p50=ms(percentile(latencies, 50)), confirm_ms_p99=ms(percentile(latencies, 99)))
    print(f"{total} confirmed through {kills} kills: lost {len(lost)}, duplicates {duplicates}, retried {retried}, "
          f"recovery max {max(recovery):.2f} s, confirm p50 {ms(percentile(latencies, 50))} ms "
          f"p99 {ms(percentile(latencies, 99))} ms")
    assert not lost  # every confirmed message survived every kill
    assert set(ids) <= set(confirmed)  # nothing invented
    assert duplicates == 0  # each retry carried the message id as dedup_id


def test_kill9_five_times_while_sending_10k_confirmed(tmp_path: Path) -> None:
    _kill_while_sending(tmp_path, total=10_000, kills=5, seed=101)


@pytest.mark.full
def test_kill9_twenty_times_while_sending_100k_confirmed(tmp_path: Path) -> None:
    _kill_while_sending(tmp_path, total=100_000, kills=20, seed=202)
