"""Part 8: malformed input on the broker's port - a flood of bad multipart messages, raw TCP garbage, and a
frame header that claims a gigabyte.

The broker is ``ringbus broker`` in a child process, so a crash is a dead process and its memory is its own
(/proc/PID/status). Promise: every malformed message is counted and dropped, nothing crashes, nothing
accepted is lost, and a well-formed client keeps being served meanwhile. A frame that claims 1 GiB is
refused before anything is allocated for it (libzmq checks ZMQ_MAXMSGSIZE against the header and drops
the connection). Figures: the well-formed client's round-trip p99 during the flood, the broker's RSS growth.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringbus
from ringbus.bench._harness import percentile
from ringbus.broker.process import BrokerProcess

from . import figures
from ._peers import free_tcp_endpoint, ms, peer, proc_status_mib

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WAIT = 60.0
BAD_COUNTERS = ("malformed", "unknown_command", "errors")

# ZMTP 3.0 (rfc.zeromq.org/spec/23): greeting with the NULL mechanism as client, then READY as a DEALER.
GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + bytes(31)
_READY_BODY = b"\x05READY" + b"\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
READY = bytes([0x04, len(_READY_BODY)]) + _READY_BODY
LONG, MORE = 0x02, 0x01


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    with BrokerProcess(tmp_path / "data", free_tcp_endpoint()) as running:
        yield running


def _address(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def _bad_counts(bus: ringbus.Bus) -> int:
    counters = bus.broker_stats()["counters"]  # type: ignore[attr-defined]
    return sum(int(counters[name]) for name in BAD_COUNTERS)


def _raw_garbage(endpoint: str, connections: int, seed: int) -> None:
    """TCP connections that write what no ZeroMQ peer would: noise, a greeting cut short, a bad version."""
    rng = random.Random(seed)
    starts = [b"", GREETING[:10], b"\xff" + bytes(8) + b"\x7f\x09\x09", GREETING + b"\x04\xff" + os.urandom(64)]
    for i in range(connections):
        with socket.create_connection(_address(endpoint), timeout=5) as raw:
            try:
                raw.sendall(starts[i % len(starts)] + os.urandom(rng.randrange(1, 4096)))
            except OSError:  # the broker hung up first: that is what it should do
                pass


def _round_trip(bus: ringbus.Bus, sent: list[str]) -> float:
    """A well-formed client's unit of work: a confirmed send, its delivery, the ack. Returns its seconds."""
    started = time.monotonic()
    sent.append(bus.send("probe", b"well-formed"))
    got = bus.receive("probe", timeout=WAIT)
    assert got is not None and got.id == sent[-1]  # served, in order
    got.ack()
    return time.monotonic() - started


def _flood(broker: BrokerProcess, count: int, raw_connections: int) -> None:
    url = broker.endpoint
    sent: list[str] = []
    with ringbus.connect(url, timeout=10.0) as bus:
        bus.declare_queue("flood")
        bus.declare_queue("probe")
        # At rest first: the same round trips with nothing else going on, to hold the flood's figure against.
        at_rest = [_round_trip(bus, sent) for _ in range(200)]
        bad_before = _bad_counts(bus)
        rss_before = proc_status_mib(broker.pid)
        latencies: list[float] = []
        garbage = threading.Thread(target=_raw_garbage, args=(url, raw_connections, 7), daemon=True)
        # Bursts of 500 back to back, 0.25 s apart: every burst fills the broker's turns with garbage.
        with peer("flood", url, count, 5, 500, 0.25) as flooder:
            garbage.start()
            deadline = time.monotonic() + WAIT
            # Round trips of a well-formed client until the flood is over and the broker has counted all of it.
            while flooder.poll() is None or garbage.is_alive() or _bad_counts(bus) - bad_before < count:
                assert time.monotonic() < deadline, f"the broker counted {_bad_counts(bus) - bad_before} of {count}"
                latencies.append(_round_trip(bus, sent))
            out, _ = flooder.communicate(timeout=WAIT)
        garbage.join(WAIT)
        bad = _bad_counts(bus) - bad_before
        rss_after = proc_status_mib(broker.pid)
        stats = bus.queue_stats("probe")
    assert out.strip() == f"sent {count}"
    assert broker.process is not None and broker.process.poll() is None  # no crash
    figures.record("malformed_flood", messages=count, raw_connections=raw_connections, counted=bad,
                   client_round_trips=len(latencies), client_ms_p50=ms(percentile(latencies, 50)),
                   client_ms_p99=ms(percentile(latencies, 99)), at_rest_ms_p99=ms(percentile(at_rest, 99)),
                   rss_growth_mib=round(rss_after - rss_before, 2))
    print(f"{count} malformed messages + {raw_connections} garbage connections: counted {bad}, client p99 "
          f"{ms(percentile(latencies, 99))} ms over {len(latencies)} round trips, RSS {rss_before:.1f} -> "
          f"{rss_after:.1f} MiB")
    # Each flood message counted once (as malformed, unknown or refused); raw garbage that libzmq took for a
    # ZMTP 1.0 peer's frames reaches the broker as messages too, and is counted like them.
    assert bad >= count
    assert (stats.depth, stats.in_flight, stats.acked) == (0, 0, len(sent))  # nothing accepted was lost
    assert rss_after - rss_before < 100.0  # sanity only (the figure is the measure): a leak per message shows


def test_10k_malformed_messages_and_raw_garbage(broker: BrokerProcess) -> None:
    _flood(broker, count=10_000, raw_connections=200)


@pytest.mark.full
def test_100k_malformed_messages_and_raw_garbage(broker: BrokerProcess) -> None:
    _flood(broker, count=100_000, raw_connections=2_000)


def _handshake(endpoint: str) -> socket.socket:
    """A raw TCP connection that has done the ZMTP handshake: the broker now reads frames from it."""
    raw = socket.create_connection(_address(endpoint), timeout=10)
    raw.sendall(GREETING)
    greeting = b""
    while len(greeting) < 64:
        chunk = raw.recv(64 - len(greeting))
        assert chunk, "the broker closed the connection during the greeting"
        greeting += chunk
    assert greeting[:1] == b"\xff" and greeting[10] == 3  # a ZMTP 3.x peer
    raw.sendall(READY)
    ready = raw.recv(2)
    assert ready[:1] == b"\x04", ready  # its READY command
    return raw


def _closed_by_peer(raw: socket.socket) -> bool:
    try:
        while raw.recv(65536):  # the rest of its READY, then end of stream
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("flags", [LONG, LONG | MORE], ids=["last-frame", "more-frames"])
def test_a_frame_claiming_1_gib_is_refused_without_allocating_it(broker: BrokerProcess, flags: int) -> None:
    with ringbus.connect(broker.endpoint) as bus:
        bus.declare_queue("q")
        before = {f: proc_status_mib(broker.pid, f) for f in ("VmRSS", "VmPeak")}
        raw = _handshake(broker.endpoint)
        try:
            raw.sendall(bytes([flags]) + (1 << 30).to_bytes(8, "big") + os.urandom(4096))
            assert _closed_by_peer(raw)  # dropped at the header, not read into a buffer
        finally:
            raw.close()
        after = {f: proc_status_mib(broker.pid, f) for f in ("VmRSS", "VmPeak")}
        mid = bus.send("q", b"still serving")
        got = bus.receive("q", timeout=10)
        assert got is not None and got.id == mid
        got.ack()
    figures.record("gib_frame_claim", flags=flags, rss_growth_mib=round(after["VmRSS"] - before["VmRSS"], 2),
                   peak_virtual_growth_mib=round(after["VmPeak"] - before["VmPeak"], 2), refused=True)
    # Even untouched, a 1 GiB buffer would raise the peak of the broker's address space by 1024 MiB.
    assert after["VmPeak"] - before["VmPeak"] < 256.0
    assert after["VmRSS"] - before["VmRSS"] < 64.0
