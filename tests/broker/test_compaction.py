"""Compaction: fully settled segments are deleted, so disk use stays bounded under a steady load."""

from __future__ import annotations

from pathlib import Path

import ringbus
from ringbus.broker.server import Broker


def _take_and_ack(bus: ringbus.Bus, queue: str, count: int) -> None:
    taken = 0
    for message in bus.consume(queue, prefetch=count, timeout=5):
        message.ack()
        taken += 1
        if taken == count:
            break
    assert taken == count


def _disk(data: Path) -> tuple[int, int]:
    segments = list(data.glob("*.log"))
    return len(segments), sum(p.stat().st_size for p in segments)


def test_steady_load_keeps_disk_bounded_and_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    segment = 64 * 1024
    peak_segments = 0
    with Broker(data, "tcp://127.0.0.1:0", segment_bytes=segment) as broker:
        with ringbus.connect(broker.endpoint) as bus:
            bus.declare_queue("steady", max_attempts=3)
            for _ in range(40):
                bus.send_many("steady", [b"%06d" % i * 10 for i in range(250)])
                _take_and_ack(bus, "steady", 250)
                bus.queue_stats("steady")  # a round trip: the acks are applied
                peak_segments = max(peak_segments, _disk(data)[0])
            bus.send("steady", b"kept")
            total_written = broker.counters["confirms"]
    segments, size = _disk(data)
    # 10,000 messages of ~200 bytes of log each went through: about 30 segments' worth.
    assert total_written > 40
    assert peak_segments <= 4, f"compaction let {peak_segments} segments pile up"
    assert size <= 4 * segment
    with Broker(data, "tcp://127.0.0.1:0", segment_bytes=segment) as broker:
        with ringbus.connect(broker.endpoint) as bus:
            assert "steady" in bus.queues()  # the declaration survived the deletion of its first segment
            message = bus.receive("steady", timeout=5)
            assert message is not None and message.body == b"kept"
            assert bus.receive("steady", timeout=0.2) is None


def test_an_unsettled_message_pins_its_segment(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Broker(data, "tcp://127.0.0.1:0", segment_bytes=32 * 1024) as broker:
        with ringbus.connect(broker.endpoint) as bus:
            bus.declare_queue("old")
            bus.declare_queue("busy")
            bus.send("old", b"waits for ever")
            for _ in range(20):
                bus.send_many("busy", [b"x" * 100] * 100)
                _take_and_ack(bus, "busy", 100)
            bus.queue_stats("busy")
    assert _disk(data)[0] > 4  # nothing below the waiting message may go
    with Broker(data, "tcp://127.0.0.1:0", segment_bytes=32 * 1024) as broker:
        with ringbus.connect(broker.endpoint) as bus:
            message = bus.receive("old", timeout=5)
            assert message is not None and message.body == b"waits for ever"
            assert bus.queue_stats("busy").depth == 0
