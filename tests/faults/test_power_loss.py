"""Issue 10, part 2: simulated power loss under the broker's log, over hundreds of seeded runs.

A FaultyStorage (faulty_storage.py) keeps what an fsync made durable apart from what only reached the page cache,
and on a power loss drops, tears or reorders the rest. Two levels:

- the log alone: records appended and committed in turns (some turns without an fsync, as the broker's turns
  without a confirm), old segments deleted now and then, the power lost at a random step (sometimes again while
  the log recovers), then recovery: every committed record is there, byte for byte; nothing is invented;
- the broker: a Broker thread on the faulty storage, a client sending with confirms (single sends and batches)
  and consuming with acks, the power lost at a random step; a broker started on what the disk kept must hold
  every confirmed message that was not acked.

Under ``fsync="never"`` the storage models the kernel's own writeback (a change older than ``writeback_after``
is on disk without an fsync): a confirmed message may be lost only if it was confirmed within that window
before the loss. Each test records its figures (figures.py) and asserts lost = 0 / outside the window = 0.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ringbus
from ringbus.backends.broker import BrokerBus
from ringbus.broker.log import SegmentedLog

from .faulty_storage import MODES, FaultyStorage, write_image
from .figures import record
from .recovery_check import recovered_ids
from .tiers import tiers

POLICIES = ("always", "batch", "never")
WINDOW = 3.0  # "never": turns of the simulated clock after which the modelled kernel wrote a change back
BROKER_WINDOW = 0.02  # "never" at the broker: seconds (a scaled-down vm.dirty_expire_centisecs)


def abandon(log: SegmentedLog) -> None:
    """What the power loss leaves of the process: its files closed, nothing more written."""
    log._release()


def _seed_base() -> int:
    return int(os.environ.get("RINGBUS_TEST_SEED", "0")) or 1


# -- the log alone ---------------------------------------------------------------------------------------------


def log_run(directory: Path, policy: str, seed: int) -> Counter[str]:
    """One run: turns of appends and commits until the power goes; returns what recovery kept and lost."""
    rng = random.Random(seed)
    clock = [0.0]
    mode = rng.choice(MODES[:1] + MODES[2:])  # drop, prefix or random ("keep" is a kill -9, not a power loss)
    storage = FaultyStorage(seed, writeback_after=WINDOW if policy == "never" else None, clock=lambda: clock[0],
                            lose_power_at=rng.randrange(1, 80), loss_mode=mode)
    segment_bytes = rng.choice((300, 1000, 4096))
    appended: dict[int, tuple[int, bytes]] = {}
    confirmed: dict[int, float] = {}  # lsn -> time the commit returned
    waiting: list[int] = []  # committed without an fsync: confirmed by the next fsync (batch)
    floor = 0  # records below it were in deleted segments
    log = None
    try:
        log = SegmentedLog(directory, fsync=policy, segment_bytes=segment_bytes, storage=storage)
        for _ in range(60):
            clock[0] += 1.0
            for _ in range(rng.randrange(1, 7)):
                payload = rng.randbytes(rng.choice((0, 5, rng.randrange(200))))
                kind = rng.randrange(256)
                lsn = log.append(kind, payload)
                appended[lsn] = (kind, payload)
                waiting.append(lsn)
            sync = policy != "batch" or rng.random() < 0.6
            log.commit(sync=sync)
            if sync:
                confirmed.update(dict.fromkeys(waiting, clock[0]))
                waiting.clear()
            if confirmed and rng.random() < 0.1:
                below = rng.choice(list(confirmed))
                # from the call on, what it deletes is not needed (the power may go before it returns)
                floor = max(floor, next(s.base_lsn for s in log.segments() if s.base_lsn + s.size > below))
                log.delete_segments_before(below)
    except ringbus.RingbusError:
        assert storage.image is not None, "the log failed without a power loss"
    if log is not None:
        abandon(log)
    lost_at = storage.lost_at if storage.image is not None else clock[0]
    write_image(directory, storage.power_loss(mode))
    tally: Counter[str] = Counter(runs=1)
    if rng.random() < 0.3:  # the power goes again while the log recovers
        tally["second_losses"] += 1
        again = FaultyStorage(seed + 1, lose_power_at=rng.randrange(1, 4), loss_mode=rng.choice(MODES))
        try:
            with SegmentedLog(directory, fsync=policy, segment_bytes=segment_bytes, storage=again) as relog:
                relog.commit()
        except ringbus.RingbusError:
            assert again.image is not None
        write_image(directory, again.power_loss(rng.choice(MODES)))
    with SegmentedLog(directory, fsync=policy, segment_bytes=segment_bytes) as log:
        got = list(log.replay())
        stats = log.stats()
    lsns = [lsn for lsn, _, _ in got]
    assert lsns == sorted(set(lsns)), f"seed {seed}: LSNs out of order or repeated"
    kept = set(lsns)
    for lsn, kind, payload in got:
        if appended.get(lsn) != (kind, payload):
            tally["invented"] += 1
    expected = {lsn: at for lsn, at in confirmed.items() if lsn >= floor}
    lost = [lsn for lsn in expected if lsn not in kept]
    tally["confirmed"] += len(expected)
    tally["lost"] += len(lost)
    # "never": only what was confirmed within the writeback window before the loss may be gone
    tally["lost_outside_window"] += sum(1 for lsn in lost if expected[lsn] <= lost_at - WINDOW)
    tally["confirmed_outside_window"] += sum(1 for at in expected.values() if at <= lost_at - WINDOW)
    tally["resurrected"] += sum(1 for lsn in confirmed if lsn < floor and lsn in kept)
    tally["unconfirmed_kept"] += sum(1 for lsn in kept if lsn in appended and lsn not in confirmed)
    tally["torn_tails_cut"] += stats["torn_records_cut"]
    tally["damaged_records_skipped"] += stats["corrupt_records"]
    return tally


@tiers(200, 2_000)
@pytest.mark.parametrize("policy", POLICIES)
def test_power_loss_under_the_log(tmp_path: Path, policy: str, runs: int) -> None:
    base = _seed_base()
    total: Counter[str] = Counter()
    for i in range(runs):
        directory = tmp_path / f"run{i}"
        try:
            total += log_run(directory, policy, base * 100_003 + i)
        except AssertionError as exc:
            raise AssertionError(f"run {i} (seed {base * 100_003 + i}, RINGBUS_TEST_SEED={base}): {exc}") from exc
    figures = {k: total[k] for k in ("runs", "confirmed", "lost", "confirmed_outside_window", "lost_outside_window",
                                     "resurrected",
                                     "unconfirmed_kept", "invented", "torn_tails_cut", "damaged_records_skipped",
                                     "second_losses")}
    print(f"log power loss, fsync={policy}: {figures}")
    record("power_loss.log", policy=policy, window_turns=WINDOW if policy == "never" else None, **figures)
    assert total["invented"] == 0
    assert total["lost_outside_window"] == 0
    if policy != "never":
        assert total["lost"] == 0
    assert total["confirmed"] > runs  # the runs confirmed something before the power went


# -- the broker ------------------------------------------------------------------------------------------------


def broker_run(tmp_path: Path, policy: str, seed: int, steps: int) -> Counter[str]:
    """A Broker thread on a FaultyStorage that loses power at a random step; a client sends, consumes, acks."""
    rng = random.Random(seed)
    data = tmp_path / "data"
    mode = rng.choice(("drop", "prefix", "random"))
    storage = FaultyStorage(seed, writeback_after=BROKER_WINDOW if policy == "never" else None,
                            lose_power_at=rng.randrange(1, steps + 1), loss_mode=mode)
    confirmed: dict[str, float] = {}  # message id -> when its confirm arrived
    acked: set[str] = set()
    tally: Counter[str] = Counter(runs=1)
    broker = ringbus.Broker(data, "tcp://127.0.0.1:0", fsync=policy, segment_bytes=rng.choice((2048, 8192)),
                            storage=storage)
    try:
        broker.start()
    except ringbus.RingbusError as exc:
        assert storage.image is not None, f"seed {seed}: the broker did not start without a power loss: {exc!r}"
        tally["lost_while_starting"] += 1
    else:
        try:
            _send_and_consume(broker.endpoint, policy, rng, storage, confirmed, acked, tally)
        finally:
            broker.stop()
    assert not broker.running
    if storage.image is None:
        tally["loss_after_workload"] += 1
    lost_at = storage.lost_at if storage.image is not None else time.monotonic()
    write_image(data, storage.power_loss(mode))
    recovered = recovered_ids(data)
    kept = Counter(recovered)
    lost = [mid for mid in confirmed if mid not in acked and mid not in kept]
    tally["confirmed"] += len(confirmed)
    tally["lost"] += len(lost)
    tally["lost_outside_window"] += sum(1 for mid in lost if confirmed[mid] <= lost_at - BROKER_WINDOW)
    tally["confirmed_outside_window"] += sum(1 for at in confirmed.values() if at <= lost_at - BROKER_WINDOW)
    tally["acked_back"] += sum(1 for mid in acked if mid in kept)  # duplicates: acks a power loss undid
    tally["repeated"] += sum(n - 1 for n in kept.values())
    tally["unconfirmed_kept"] += sum(1 for mid in kept if mid not in confirmed)
    return tally


def _send_and_consume(endpoint: str, policy: str, rng: random.Random, storage: FaultyStorage,
                      confirmed: dict[str, float], acked: set[str], tally: Counter[str]) -> None:
    """Sends (single and batches) with confirms, receives and acks some, until the power goes."""
    with BrokerBus(endpoint, timeout=10.0) as bus:
        try:
            bus.declare_queue("orders", durable=True)
            for i in range(80):
                if rng.random() < 0.2:
                    ids = bus.send_many("orders", [b"batch-%d-%d" % (i, j) for j in range(rng.randrange(1, 8))])
                else:
                    ids = [bus.send("orders", b"order-%d" % i + bytes(rng.randrange(300)))]
                confirmed.update(dict.fromkeys(ids, time.monotonic()))
                if policy == "never":
                    time.sleep(0.002)  # most confirms must be older than the window when the power goes
                if rng.random() < 0.3:
                    message = bus.receive("orders", timeout=1.0)
                    if message is not None and rng.random() < 0.8:
                        message.ack()
                        acked.add(message.id)
        except ringbus.RingbusError as exc:
            assert storage.image is not None, f"{exc!r} without a power loss"
            tally["refused_after_loss"] += 1


_STEPS: dict[str, int] = {}


def _steps(tmp_path: Path, policy: str) -> int:
    """How many mutating storage calls the workload makes when the power stays on (the range of loss points)."""
    if policy not in _STEPS:
        probe = tmp_path / "probe"
        storage = FaultyStorage(0)
        with ringbus.Broker(probe / "data", "tcp://127.0.0.1:0", fsync=policy, segment_bytes=4096,
                            storage=storage) as broker, BrokerBus(broker.endpoint) as bus:
            bus.declare_queue("orders", durable=True)
            for i in range(80):
                bus.send("orders", b"order-%d" % i + bytes(150))
        _STEPS[policy] = storage.mutations
    return _STEPS[policy]


@tiers(25, 300)
@pytest.mark.parametrize("policy", POLICIES)
def test_power_loss_under_the_broker(tmp_path: Path, policy: str, runs: int) -> None:
    steps = _steps(tmp_path, policy)
    base = _seed_base()
    total: Counter[str] = Counter()
    for i in range(runs):
        seed = base * 100_019 + i
        try:
            total += broker_run(tmp_path / f"run{i}", policy, seed, steps)
        except AssertionError as exc:
            raise AssertionError(f"run {i} (seed {seed}, RINGBUS_TEST_SEED={base}): {exc}") from exc
    figures: dict[str, Any] = {k: total[k] for k in ("runs", "confirmed", "lost", "confirmed_outside_window",
                                                     "lost_outside_window",
                                                     "acked_back", "repeated", "unconfirmed_kept",
                                                     "refused_after_loss", "loss_after_workload",
                                                     "lost_while_starting")}
    print(f"broker power loss, fsync={policy}: {figures}")
    record("power_loss.broker", policy=policy, window_s=BROKER_WINDOW if policy == "never" else None,
           storage_steps=steps, **figures)
    assert total["lost_outside_window"] == 0
    assert total["repeated"] == 0
    if policy != "never":
        assert total["lost"] == 0
    assert total["confirmed"] > runs
