"""Issue 10, part 4: I/O errors at every write, fsync, directory fsync and open, a full disk, and a crash at
each step of a segment roll and of compaction.

For each fault point a Broker thread runs on a FaultyStorage armed to fail that one call (EIO once, or ENOSPC
for good: a full disk stays full), while a client sends messages one at a time with confirms and consumes and
acks some. The promise:

- no confirm after a failed write or fsync: every send issued once a fault happened is answered with an error;
- that error is a RingbusError naming the disk's problem ("ENOSPC ... the disk is full", "EIO ..."), and the
  broker keeps refusing writes (sends, publishes, declares) - it never trusts the disk again (fsyncgate);
- it keeps serving reads: what it holds can still be received and acked;
- after a restart on what the disk kept (unsynced writes dropped, as the kernel may drop pages it failed to
  write), confirmed-but-lost = 0 (acks made after the fault may be undone: those come back, counted).

A fault while the broker starts (recovery opens files, fsyncs a new segment) makes start() raise a
RingbusError naming the directory; a start on a healthy disk then recovers everything.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ringbus
from ringbus.backends.broker import BrokerBus

from .faulty_storage import FaultyStorage, write_image
from .figures import record
from .recovery_check import recovered_ids
from .tiers import tiers

BODY = bytes(150)
SEGMENT_BYTES = 1500  # a roll every few messages: segment creation, directory fsyncs and compaction are exercised


def _workload(endpoint: str, storage: FaultyStorage, sends: int) -> dict[str, Any]:
    """Send ``sends`` messages one at a time, receiving and acking every third; then read what is left.

    Returns the ids confirmed and acked, the errors seen, the breaches (a confirm after a fault), and whether
    a fault happened before the workload ended (``faulted``).
    """
    confirmed: list[str] = []
    acked: set[str] = set()
    refusals: list[ringbus.RingbusError] = []
    tally: Counter[str] = Counter()

    def faulted() -> bool:  # a failed unlink (compaction) is no fault of the log: it is tried again later
        return any(n for op, n in storage.failures.items() if op != "unlink")

    with BrokerBus(endpoint, timeout=10.0) as bus:
        try:
            bus.declare_queue("orders", durable=True)
        except ringbus.RingbusError as exc:
            refusals.append(exc)
        for i in range(sends):
            before = faulted()
            try:
                mid = bus.send("orders", b"order-%d " % i + BODY)
            except ringbus.RingbusError as exc:
                refusals.append(exc)
            else:
                confirmed.append(mid)
                tally["confirmed_after_fault"] += before
            if i % 3 == 2 and len(confirmed) > tally["received"]:
                message = bus.receive("orders", timeout=5.0)
                assert message is not None, "a confirmed message could not be received"
                tally["received"] += 1
                message.ack()
                acked.add(message.id)
        # An ack has no reply: without this round trip the broker may write the last one's REMOVE (and fail
        # there) after the check below, and the refusals it owes would go unchecked.
        bus.queue_stats("orders")
        faulted_in_workload = faulted()
        if faulted_in_workload:
            # still serving reads: everything it holds can be received and acked
            for probe in (lambda: bus.send("orders", b"late"), lambda: bus.publish("news", b"late"),
                          lambda: bus.declare_queue("another", durable=True)):
                with pytest.raises(ringbus.RingbusError) as refused:
                    probe()
                refusals.append(refused.value)
            held = bus.queue_stats("orders").depth
            for _ in range(held):
                message = bus.receive("orders", timeout=5.0)
                assert message is not None, "the broker stopped serving reads after a disk fault"
                message.ack()
                acked.add(message.id)
                tally["reads_after_fault"] += 1
            assert bus.queue_stats("orders").depth == 0
    return {"confirmed": confirmed, "acked": acked, "refusals": refusals, "tally": tally,
            "faulted": faulted_in_workload}


def _fault_run(tmp_path: Path, op: str, nth: int, error: int, sticky: bool, fsync: str,
               sends: int, caplog: pytest.LogCaptureFixture) -> Counter[str]:
    caplog.clear()
    data = tmp_path / "data"
    storage = FaultyStorage(nth)
    storage.fail(op, nth, error, sticky=sticky)
    tally: Counter[str] = Counter(runs=1)
    broker = ringbus.Broker(data, "tcp://127.0.0.1:0", fsync=fsync, segment_bytes=SEGMENT_BYTES, storage=storage)
    try:
        broker.start()
    except ringbus.RingbusError as exc:
        assert storage.failures[op] == 1, f"start failed with no fault injected: {exc!r}"
        assert str(data) in str(exc) and ("injected" in str(exc) or "ENOSPC" in str(exc) or "EIO" in str(exc)), exc
        tally["start_refused"] += 1
        outcome: dict[str, Any] = {"confirmed": [], "acked": set(), "refusals": [], "tally": Counter(),
                                   "faulted": True}
    else:
        try:
            outcome = _workload(broker.endpoint, storage, sends)
        finally:
            broker.stop()
    tally += outcome["tally"]
    injected = storage.failures[op]
    tally["faults_injected"] += injected
    name = errno.errorcode[error]
    if injected and not tally["start_refused"] and outcome["faulted"]:
        assert outcome["refusals"], f"{op} #{nth} failed and no send was refused"
    elif injected and not tally["start_refused"]:
        # The Nth call came after the workload's last command: the broker's final commit as it stopped (the
        # fsync of the last acks' REMOVE records, which no confirm waited for). No send follows it to be
        # refused; the failure must still be reported, and the restart below must find every confirmed message.
        tally["faults_at_stop"] += 1
        assert any(record.levelno >= logging.ERROR and str(data) in record.getMessage()
                   and name in record.getMessage() for record in caplog.records), \
            f"{op} #{nth} failed as the broker stopped and no error naming {name} was logged"
    for exc in outcome["refusals"]:
        text = str(exc)
        assert isinstance(exc, ringbus.RingbusError)
        assert name in text and "refuses" in text, f"the refusal does not name the disk's problem: {text}"
        if error == errno.ENOSPC:
            assert "the disk is full" in text
    tally["refusals"] += len(outcome["refusals"])
    # fsyncgate: what was never fsynced may be gone after the fault; the worst case is that all of it is
    write_image(data, storage.power_loss("drop") if storage.image is None else storage.image)
    kept = recovered_ids(data)
    lost = [m for m in outcome["confirmed"] if m not in outcome["acked"] and m not in kept]
    tally["confirmed"] += len(outcome["confirmed"])
    tally["lost"] += len(lost)
    tally["acked_back"] += sum(1 for m in outcome["acked"] if m in kept)
    assert not lost, f"{op} #{nth}: confirmed and lost after the restart: {lost}"
    assert tally["confirmed_after_fault"] == 0, f"{op} #{nth}: a send was confirmed after the fault"
    return tally


FAULTS = [  # (operation, errno, sticky)
    ("write", errno.EIO, False),
    ("write", errno.ENOSPC, True),  # the disk fills up mid-write and stays full
    ("fsync", errno.EIO, False),
    ("fsync_dir", errno.EIO, False),
    ("open", errno.EIO, False),
    ("open", errno.ENOSPC, True),  # no room for a new segment
]


@tiers(10, 60, "sends")
@pytest.mark.parametrize("fsync", ["always", pytest.param("batch", marks=pytest.mark.full)])
@pytest.mark.parametrize("op, error, sticky", FAULTS, ids=[f"{op}-{errno.errorcode[e]}" for op, e, _ in FAULTS])
def test_an_io_error_at_every_call(tmp_path: Path, caplog: pytest.LogCaptureFixture, op: str, error: int,
                                   sticky: bool, fsync: str, sends: int) -> None:
    """The Nth call of ``op`` fails, for N = 1, 2, ... until the workload no longer reaches an Nth call."""
    total: Counter[str] = Counter()
    for nth in itertools.count(1):
        try:
            run = _fault_run(tmp_path / f"{op}{nth}", op, nth, error, sticky, fsync, sends, caplog)
        except AssertionError as exc:
            raise AssertionError(f"{op} call #{nth} failing with {errno.errorcode[error]}: {exc}") from exc
        if not run["faults_injected"]:
            break  # the workload makes fewer calls than nth: every call has failed once
        total += run
    assert total["runs"] >= 2, f"the workload makes only {total['runs']} {op} calls"
    figures = {k: total[k] for k in ("runs", "faults_injected", "start_refused", "faults_at_stop", "confirmed", "lost",
                                     "confirmed_after_fault", "refusals", "reads_after_fault", "acked_back")}
    print(f"{op} {errno.errorcode[error]} fsync={fsync}: {figures}")
    record("disk_errors.io_error", op=op, error=errno.errorcode[error], sticky=sticky, fsync=fsync,
           sends=sends, **figures)
    assert total["faults_injected"] == total["runs"]
    assert total["lost"] == 0 and total["confirmed_after_fault"] == 0


def test_a_failed_unlink_in_compaction_costs_nothing_and_is_tried_again(tmp_path: Path) -> None:
    """Compaction's unlink failing is not a disk fault for the log: sends go on, the next roll deletes."""
    data = tmp_path / "data"
    storage = FaultyStorage(1)
    storage.fail("unlink", 1, errno.EIO)
    with ringbus.Broker(data, "tcp://127.0.0.1:0", segment_bytes=SEGMENT_BYTES, storage=storage) as broker:
        outcome = _workload(broker.endpoint, storage, 40)
        assert not outcome["refusals"]
    assert storage.failures["unlink"] == 1 and storage.calls["unlink"] > 1
    assert len(outcome["confirmed"]) == 40
    left = set(recovered_ids(data))
    assert left == set(outcome["confirmed"]) - outcome["acked"]


def test_dead_letters_and_expiries_go_on_in_memory_after_a_disk_fault(tmp_path: Path) -> None:
    """A move to a dead-letter queue cannot be logged once the log failed; it must not stop the broker."""
    storage = FaultyStorage(3)
    data = tmp_path / "data"
    with ringbus.Broker(data, "tcp://127.0.0.1:0", storage=storage) as broker, \
            BrokerBus(broker.endpoint, timeout=10.0) as bus:
        bus.declare_queue("orders", durable=True, ttl=0.3, dead_letter="orders.dlq")
        bus.declare_queue("orders.dlq", durable=True)
        expiring = bus.send("orders", b"expires after the fault")
        storage.fail("write", 1, errno.ENOSPC, sticky=True)
        with pytest.raises(ringbus.RingbusError, match="ENOSPC"):
            bus.send("orders", b"refused")
        dead = bus.receive("orders.dlq", timeout=5.0)  # the expiry moved it in memory
        assert dead is not None and dead.id == expiring
        dead.ack()
        assert broker.running
        assert bus.broker_stats()["log"]["failure"].startswith("commit failed (ENOSPC")
    assert recovered_ids(data) == [expiring] or recovered_ids(data, "orders.dlq") == [expiring]


def test_the_log_never_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """There is no rename step to fail: segments are created in place (O_EXCL), appended to, deleted whole."""
    renamed: list[tuple[Any, ...]] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        renamed.append(args)
        raise OSError(errno.EIO, "injected: rename")

    storage = FaultyStorage(2)
    storage.fail("rename", 1, errno.EIO, sticky=True)
    data = tmp_path / "data"
    with ringbus.Broker(data, "tcp://127.0.0.1:0", segment_bytes=SEGMENT_BYTES, storage=storage) as broker:
        for name in ("rename", "replace", "renames"):
            monkeypatch.setattr(os, name, refuse)
        outcome = _workload(broker.endpoint, storage, 40)
        monkeypatch.undo()
    assert not renamed and storage.calls["rename"] == 0 and not outcome["refusals"]
    assert storage.calls["unlink"] >= 1  # compaction ran: rolls and deletions happened without a rename
    record("disk_errors.rename", rename_calls=0, sends=40, segment_deletions=storage.calls["unlink"])


# -- a crash at each step ------------------------------------------------------------------------------------


@tiers(16, 60, "sends")
@pytest.mark.parametrize("mode", ["keep", "drop"], ids=["process-dies", "power-lost"])
def test_a_crash_at_each_step_of_rolls_and_compaction(tmp_path: Path, mode: str, sends: int) -> None:
    """Lose the broker at every mutating step (writes, fsyncs, segment creation, directory fsyncs, unlinks).

    "keep": the process dies there and what it wrote stays (kill -9); "drop": the machine dies there and what
    was not fsynced is gone. Either way the broker starts again, the queue is still declared, no confirmed
    message is lost, and the segments left form an unbroken chain (each starts where the one before ends).
    """
    probe = FaultyStorage(0)
    with ringbus.Broker(tmp_path / "probe", "tcp://127.0.0.1:0", segment_bytes=SEGMENT_BYTES,
                        storage=probe) as broker:
        _workload_until_loss(broker.endpoint, sends)
    steps = probe.steps
    assert {"open", "fsync_dir", "unlink"} <= set(steps), f"no roll or compaction in the workload: {set(steps)}"
    tally: Counter[str] = Counter()
    for k in range(1, len(steps) + 1):
        data = tmp_path / f"step{k}"
        storage = FaultyStorage(k, lose_power_at=k, loss_mode=mode)
        confirmed: list[str] = []
        acked: set[str] = set()
        broker = ringbus.Broker(data, "tcp://127.0.0.1:0", segment_bytes=SEGMENT_BYTES, storage=storage)
        try:
            broker.start()
        except ringbus.RingbusError:
            tally["start_failed"] += 1
        else:
            try:
                outcome = _workload_until_loss(broker.endpoint, sends)
                confirmed, acked = outcome
            finally:
                broker.stop()
        assert storage.image is not None or k > storage.mutations, f"step {k}: the power never went"
        tally[f"at {storage.steps[k - 1] if k <= len(storage.steps) else 'end'}"] += 1
        write_image(data, storage.image if storage.image is not None else storage.power_loss(mode))
        kept = recovered_ids(data)
        lost = [m for m in confirmed if m not in acked and m not in kept]
        assert not lost, f"step {k} ({steps[k - 1]}, {mode}): {len(lost)} confirmed messages lost"
        chain = sorted((int(p.stem), p.stat().st_size) for p in data.glob("*.log"))
        assert chain, f"step {k}: no segment left"
        for (base, size), (after, _) in zip(chain, chain[1:], strict=False):  # each segment and the next
            assert base + size == after, f"step {k} ({steps[k - 1]}, {mode}): segments {chain} leave a gap"
        tally["runs"] += 1
        tally["confirmed"] += len(confirmed)
        tally["lost"] += len(lost)
    figures = {k.replace(" ", "_"): v for k, v in sorted(tally.items())}
    print(f"crash at each step ({mode}): {figures}")
    record("disk_errors.crash_steps", mode=mode, sends=sends, steps=len(steps), **figures)


def _workload_until_loss(endpoint: str, sends: int) -> tuple[list[str], set[str]]:
    """Send, receive and ack until the first refusal (the power is off from then on).

    All but the newest message are acked after each send, and every fourth time that one too: a roll then
    finds nothing live in the older segments, and compaction deletes all of them - the newest segment's
    DECLARE is then the only record of the queue.
    """
    confirmed: list[str] = []
    acked: set[str] = set()
    with BrokerBus(endpoint, timeout=10.0) as bus:
        try:
            bus.declare_queue("orders", durable=True)
            for i in range(sends):
                confirmed.append(bus.send("orders", b"order-%d " % i + BODY))
                while len(confirmed) - len(acked) > (0 if i % 4 == 3 else 1):
                    message = bus.receive("orders", timeout=5.0)
                    assert message is not None, "a confirmed message could not be received"
                    message.ack()
                    acked.add(message.id)
        except ringbus.RingbusError:
            pass
    return confirmed, acked
