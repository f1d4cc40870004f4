"""The broker's promise across crashes, tested for real: `ringbus broker` in a child process, SIGKILLed mid-stream.

Every send that returned (a confirm) must be delivered after the restart; unacked deliveries come back; a torn
tail is cut and counted. Duplicates are allowed (at-least-once) and reported.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

import ringbus
from ringbus.backends.broker import BrokerBus
from ringbus.broker.process import BrokerProcess
from ringbus.errors import PeerGone


def _drain(url: str, queue: str, *, ack: bool = True, idle: float = 1.5) -> list[ringbus.Message]:
    with BrokerBus(url, timeout=10.0) as bus:
        got = []
        for message in bus.consume(queue, prefetch=500, timeout=idle):
            got.append(message)
            if ack:
                message.ack()
        return got


def _send_until_confirmed(bus: BrokerBus, queue: str, message: ringbus.Message | None) -> int:
    """Send with retries across broker restarts (None: declare the queue); return how many attempts it took."""
    for attempt in range(1, 200):
        try:
            if message is None:
                bus.declare_queue(queue)
            else:
                bus.send(queue, message, dedup_id=message.id)
            return attempt
        except PeerGone:
            continue
    raise AssertionError(f"{queue}: never confirmed")


class _Killer(threading.Thread):
    """SIGKILLs the broker at random moments while the producer sends, and starts it again on the same data."""

    def __init__(self, broker: BrokerProcess, kills: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.kills = kills
        self.random = random.Random(seed)
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(self.kills):
                self.done.wait(self.random.uniform(0.05, 0.4))
                self.broker.kill()
                self.broker = BrokerProcess(self.broker.data, self.broker.bind, fsync=self.broker.fsync).start()
        except BaseException as exc:  # surfaced by the test
            self.error = exc


@pytest.mark.parametrize("fsync", ["batch", "always", "never"])
def test_kill9_mid_stream_loses_no_confirmed_message(tmp_path: Path, fsync: str) -> None:
    total, kills = 3_000, 3
    endpoint = f"ipc://{tmp_path}/broker.sock"
    killer = _Killer(BrokerProcess(tmp_path / "data", endpoint, fsync=fsync).start(), kills, seed=len(fsync))
    confirmed: list[str] = []
    retries = 0
    try:
        with BrokerBus(endpoint, timeout=1.0) as bus:
            _send_until_confirmed(bus, "jobs", None)
            killer.start()
            for i in range(total):
                message = ringbus.Message(b"job-%d" % i)
                retries += _send_until_confirmed(bus, "jobs", message) - 1
                confirmed.append(message.id)
        killer.join()
        assert killer.error is None, killer.error
        received = _drain(endpoint, "jobs")
    finally:
        killer.join()
        killer.broker.kill()
    ids = [m.id for m in received]
    lost = set(confirmed) - set(ids)
    duplicates = len(ids) - len(set(ids))
    print(f"fsync={fsync}: {len(confirmed)} confirmed, {len(ids)} delivered, lost {len(lost)}, "
          f"duplicates {duplicates}, sends retried {retries}, kills {kills}")
    assert not lost
    assert set(ids) <= set(confirmed)  # nothing invented
    assert duplicates == 0  # dedup_id turned every retry into one message


def test_unacked_deliveries_come_back_after_a_crash(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/broker.sock"
    with BrokerProcess(tmp_path / "data", endpoint) as broker:
        with BrokerBus(endpoint) as bus:
            bus.declare_queue("work")
            sent = bus.send_many("work", [b"w%d" % i for i in range(50)])
            held = [bus.receive("work", timeout=5) for _ in range(10)]
            assert all(m is not None for m in held)
            for message in held[:5]:
                message.ack()
            bus.queue_stats("work")  # a round trip: the acks before it were applied
            broker.kill()
    with BrokerProcess(tmp_path / "data", endpoint):
        received = _drain(endpoint, "work")
    acked = {m.id for m in held[:5]}
    ids = [m.id for m in received]
    assert sorted(ids) == sorted(set(sent) - acked)
    again = {m.id: m.attempts for m in received}
    for message in held[5:]:
        assert message.id in again


def test_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/broker.sock"
    data = tmp_path / "data"
    with BrokerProcess(data, endpoint) as broker:
        with BrokerBus(endpoint) as bus:
            bus.declare_queue("q")
            sent = bus.send_many("q", [b"m%d" % i for i in range(20)])
        broker.kill()
    segment = sorted(data.glob("*.log"))[-1]
    with open(segment, "ab") as f:
        f.write(os.urandom(37))  # a record half written when the power went
    with BrokerProcess(data, endpoint):
        with BrokerBus(endpoint) as bus:
            stats = bus.broker_stats()
        received = _drain(endpoint, "q")
    assert [m.id for m in received] == sent
    assert stats["log"]["torn_records_cut"] == 1


def test_restart_keeps_queue_options_and_dead_letters(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/broker.sock"
    data = tmp_path / "data"
    with BrokerProcess(data, endpoint) as broker:
        with BrokerBus(endpoint) as bus:
            bus.declare_queue("q", max_attempts=2, max_length=10)
            bus.send("q", b"poison")
            message = bus.receive("q", timeout=5)
            assert message is not None
            message.reject()
            bus.queue_stats("q")
        broker.stop()
    with BrokerProcess(data, endpoint):
        with BrokerBus(endpoint) as bus:
            with pytest.raises(ValueError, match="max_attempts"):
                bus.declare_queue("q")  # defaults differ from what was declared before the restart
            bus.declare_queue("q", max_attempts=2, max_length=10)
            dead = bus.receive("q.dlq", timeout=5)
            assert dead is not None and dead.body == b"poison"
            assert dead.headers["ringbus-dead-reason"] == "rejected"


def test_a_delivery_in_flight_at_the_crash_counts_as_an_attempt(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/broker.sock"
    data = tmp_path / "data"
    with BrokerProcess(data, endpoint) as broker:
        with BrokerBus(endpoint) as bus:
            bus.declare_queue("q", max_attempts=2)
            bus.send("q", b"crashes its broker")
            assert bus.receive("q", timeout=5) is not None
            bus.queue_stats("q")  # a round trip: the delivery was committed with the turn
            broker.kill()
    with BrokerProcess(data, endpoint) as broker:
        with BrokerBus(endpoint) as bus:
            again = bus.receive("q", timeout=5)
            assert again is not None and again.attempts == 1
            broker.kill()
    with BrokerProcess(data, endpoint):
        with BrokerBus(endpoint) as bus:
            assert bus.receive("q", timeout=0.5) is None  # two deliveries were max_attempts
            dead = bus.receive("q.dlq", timeout=5)
            assert dead is not None and dead.headers["ringbus-dead-reason"] == "max_attempts"


def test_a_body_sent_in_several_frames_survives_a_restart(tmp_path: Path) -> None:
    import msgspec
    import zmq

    from ringbus.broker.protocol import OK, SIGNATURE, Command, pack

    endpoint = f"ipc://{tmp_path}/broker.sock"
    data = tmp_path / "data"
    header, _ = ringbus.codec.encode(ringbus.Message(b"", id="split"), inline_max=-1)
    envelope = msgspec.msgpack.decode(header[4:])
    envelope[0] = 3  # three body frames follow
    header = header[:4] + msgspec.msgpack.encode(envelope)
    with BrokerProcess(data, endpoint) as broker:
        with BrokerBus(endpoint) as bus:
            bus.declare_queue("q")
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(endpoint)
        try:
            socket.send_multipart([SIGNATURE, Command.SEND, b"1", pack({"queue": "q"}), header, b"ab", b"cd", b"ef"])
            assert socket.poll(10_000)
            assert socket.recv_multipart()[1] == OK
        finally:
            socket.close()
        broker.kill()
    with BrokerProcess(data, endpoint):
        received = _drain(endpoint, "q")
    assert [(m.id, m.body) for m in received] == [("split", b"abcdef")]
