"""Consumer liveness (Paranoid Pirate): a consumer that dies has its messages delivered again long before their
visibility timeout; one that is only slow keeps them. Also Majordomo clients and workers of others' making."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

import ringbus
from ringbus.broker.server import Broker

CONSUMER = textwrap.dedent("""
    import sys, time, ringbus
    bus = ringbus.connect(sys.argv[1])
    message = bus.receive("jobs", timeout=10)
    print(message.id, flush=True)
    time.sleep(60)  # holds the message unacked until it is killed
""")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "data", "tcp://127.0.0.1:0", heartbeat=0.2, liveness=3) as running:
        yield running


def test_killed_consumer_messages_come_back_before_the_visibility_timeout(broker: Broker) -> None:
    with ringbus.connect(broker.endpoint) as bus:
        bus.declare_queue("jobs", visibility_timeout=600.0)
        sent = bus.send("jobs", b"work")
        child = subprocess.Popen([sys.executable, "-c", CONSUMER, broker.endpoint], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == sent
            assert bus.receive("jobs", timeout=0.3) is None  # held by the live consumer
            child.kill()
            child.wait()
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()
        again = bus.receive("jobs", timeout=30)  # after ~3 missed heartbeats, not 600 s
        assert again is not None and again.id == sent and again.attempts == 1
        again.ack()
    assert broker.counters["sessions_expired"] >= 1


def test_a_slow_consumer_keeps_its_messages(broker: Broker) -> None:
    with ringbus.connect(broker.endpoint) as bus, ringbus.connect(broker.endpoint) as other:
        bus.declare_queue("jobs", visibility_timeout=600.0)
        bus.send("jobs", b"slow work")
        held = bus.receive("jobs", timeout=5)
        assert held is not None
        time.sleep(1.5)  # many heartbeat periods with the bus idle: its heartbeat thread keeps it alive
        assert other.receive("jobs", timeout=0.2) is None
        held.ack()


def test_zguide_style_majordomo_peers_through_the_broker(broker: Broker) -> None:
    """A raw REQ client (mdcliapi) and a raw DEALER worker (mdwrkapi) talk through our broker unchanged."""
    context = zmq.Context.instance()
    stop = threading.Event()

    def worker() -> None:
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(broker.endpoint)
        socket.send_multipart([b"", b"MDPW01", b"\x01", b"echo"])  # READY
        try:
            while not stop.is_set():
                if not socket.poll(50):
                    continue
                frames = socket.recv_multipart()
                if frames[2] == b"\x02":  # REQUEST: ["", MDPW01, 0x02, client, "", body...]
                    client, body = frames[3], frames[5:]
                    socket.send_multipart([b"", b"MDPW01", b"\x03", client, b"", *[b.upper() for b in body]])
        finally:
            socket.send_multipart([b"", b"MDPW01", b"\x05"])
            socket.close()

    thread = threading.Thread(target=worker)
    thread.start()
    client = context.socket(zmq.REQ)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(broker.endpoint)
    try:
        client.send_multipart([b"MDPC01", b"echo", b"hello", b"mdp"])
        assert client.poll(10_000)
        assert client.recv_multipart() == [b"MDPC01", b"echo", b"HELLO", b"MDP"]
    finally:
        client.close()
        stop.set()
        thread.join()


def test_stats_command_prints_the_queues(broker: Broker) -> None:
    with ringbus.connect(broker.endpoint) as bus:
        bus.declare_queue("orders")
        bus.send_many("orders", [b"a", b"b", b"c"])
        bus.receive("orders", timeout=5)
    out = subprocess.run([sys.executable, "-m", "ringbus", "stats", "--url", broker.endpoint],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    row = next(line.split() for line in out.splitlines() if line.startswith("orders "))
    assert row[1:3] in (["2", "1"], ["3", "0"])  # depth, in flight (the receiver's bus closed: back to the queue)
    assert "malformed" in out


def test_stats_command_says_when_no_broker_answers() -> None:
    result = subprocess.run([sys.executable, "-m", "ringbus", "stats", "--url", "tcp://127.0.0.1:1",
                             "--timeout", "0.5"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "did not answer" in result.stderr
