"""Bad input on the broker's socket is counted and dropped; the broker keeps serving everyone else."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

import ringbus
from ringbus.broker.protocol import ERR, SIGNATURE, Command, pack, unpack
from ringbus.broker.server import Broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "data", "tcp://127.0.0.1:0", max_message=1024 * 1024) as running:
        yield running


@pytest.fixture
def raw(broker: Broker) -> Iterator[zmq.Socket]:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(broker.endpoint)
    yield socket
    socket.close()


def _reply(socket: zmq.Socket, timeout: float = 5.0) -> list[bytes]:
    assert socket.poll(timeout * 1000), "no reply from the broker"
    return socket.recv_multipart()


def _still_serving(broker: Broker) -> None:
    with ringbus.connect(broker.endpoint) as bus:
        bus.declare_queue("alive")
        mid = bus.send("alive", b"still here")
        message = bus.receive("alive", timeout=5)
        assert message is not None and message.id == mid
        message.ack()


def test_random_frames_are_counted_and_dropped(broker: Broker, raw: zmq.Socket) -> None:
    rng = random.Random(1)
    sent = 2_000
    for _ in range(sent):
        frames = [os.urandom(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.3:
            frames[0] = SIGNATURE  # past the first check, garbage after it
        raw.send_multipart(frames)
    _still_serving(broker)
    counters = broker.counters
    assert counters["malformed"] + counters["unknown_command"] + counters["errors"] >= sent * 0.99
    assert broker.running


def test_unknown_command_gets_an_error_naming_it(broker: Broker, raw: zmq.Socket) -> None:
    raw.send_multipart([SIGNATURE, b"FROB", b"1", pack({})])
    frames = _reply(raw)
    assert frames[1] == ERR and frames[2] == b"1"
    error = unpack(frames[3])
    assert error["type"] == "ProtocolError" and "FROB" in error["message"]
    assert broker.counters["unknown_command"] == 1


def test_wrong_protocol_version_is_dropped(broker: Broker, raw: zmq.Socket) -> None:
    raw.send_multipart([b"RBB9", Command.QUEUES, b"1", pack({})])
    _still_serving(broker)
    assert broker.counters["malformed"] >= 1


@pytest.mark.parametrize("args", [b"\xc1", msgspec.msgpack.encode([1, 2]), msgspec.msgpack.encode({"queue": 5})])
def test_bad_arguments_get_an_error(broker: Broker, raw: zmq.Socket, args: bytes) -> None:
    raw.send_multipart([SIGNATURE, Command.SEND, b"7", args, b"not a message"])
    frames = _reply(raw)
    assert frames[1] == ERR
    _still_serving(broker)


def test_bad_message_frames_get_an_error(broker: Broker, raw: zmq.Socket) -> None:
    with ringbus.connect(broker.endpoint) as bus:
        bus.declare_queue("q")
    raw.send_multipart([SIGNATURE, Command.SEND, b"8", pack({"queue": "q"}), b"RB\x01\x00garbage"])
    frames = _reply(raw)
    assert frames[1] == ERR and unpack(frames[3])["type"] == "ProtocolError"
    raw.send_multipart([SIGNATURE, Command.SEND_MANY, b"9", pack({"queue": "q", "frames": [3]}), b"x"])
    assert _reply(raw)[1] == ERR
    with ringbus.connect(broker.endpoint) as bus:
        assert bus.queue_stats("q").depth == 0  # nothing half-accepted


def test_oversized_frame_is_refused_without_taking_the_broker_down(broker: Broker) -> None:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(broker.endpoint)
    try:
        socket.send_multipart([SIGNATURE, Command.QUEUES, b"1", pack({}), b"x" * (4 * 1024 * 1024)])
        # libzmq drops the connection of a peer that sends a frame over MAXMSGSIZE: no reply comes.
        assert not socket.poll(500)
    finally:
        socket.close()
    _still_serving(broker)


def test_client_that_vanishes_mid_request(broker: Broker) -> None:
    with ringbus.connect(broker.endpoint) as bus:
        bus.declare_queue("q")
    for _ in range(20):
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 5000)  # the requests leave; the replies find nobody
        socket.connect(broker.endpoint)
        # A long poll that will never be read, and a send whose confirm has nobody to go to.
        socket.send_multipart([SIGNATURE, Command.FETCH, b"1", pack({"queue": "q", "session": "gone", "wait": 0.2})])
        socket.send_multipart([SIGNATURE, Command.SEND, b"2", pack({"queue": "q"}),
                               *ringbus.codec.encode(ringbus.Message(b"orphan"))])
        socket.close()
    with ringbus.connect(broker.endpoint) as bus:
        deadline = time.monotonic() + 10
        while bus.queue_stats("q").depth < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bus.queue_stats("q").depth == 20  # accepted sends are kept even if their sender left
    _still_serving(broker)


def test_bad_calls_on_the_bus_raise_clear_errors(broker: Broker) -> None:
    with ringbus.connect(broker.endpoint) as bus:
        with pytest.raises(ringbus.NotFound, match="nope"):
            bus.send("nope", b"x")
        with pytest.raises(TypeError, match="str"):
            bus.send("nope", "text")  # type: ignore[arg-type]
        bus.declare_queue("q")
        bus.send("q", b"x")
        message = bus.receive("q", timeout=5)
        assert message is not None
        message.ack()
        with pytest.raises(ringbus.RingbusError, match="already settled"):
            message.ack()
        bus.send("q", b"y")
        held = bus.receive("q", timeout=5)
    assert held is not None
    with pytest.raises(ringbus.Closed):
        held.ack()
    _still_serving(broker)
