"""docs/protocol.md, part "Broker": its pyzmq example runs against a real broker, and its tables name what the code has.

Also the Python examples of docs/broker.md, run against a broker in a thread.
"""

from __future__ import annotations

import ast
import pathlib
import re
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq

import ringbus
from ringbus import Message, codec
from ringbus.broker import log as segment_log
from ringbus.broker import protocol, server, store
from ringbus.broker.server import Broker

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
GUIDE = DOC.with_name("broker.md")


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def fenced_block(marker: str, doc: pathlib.Path = DOC) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in ``doc``."""
    match = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)\n```", doc.read_text(encoding="utf-8"), re.DOTALL)
    assert match, f"{doc.name} has no code block after <!-- {marker} -->"
    return match.group(1)


def run_block(marker: str) -> dict[str, Any]:
    """The names a doc code block defines, executed as a module (not as __main__)."""
    namespace: dict[str, Any] = {"__name__": f"doc_{marker.replace('-', '_')}"}
    exec(compile(fenced_block(marker), str(DOC), "exec"), namespace)
    return namespace


def broker_part() -> str:
    text = doc_text()
    at = text.index("\n# Broker\n")
    return text[at:]


@pytest.fixture
def broker(tmp_path: pathlib.Path) -> Iterator[Broker]:
    with Broker(tmp_path / "data", "tcp://127.0.0.1:0") as running:
        yield running


@pytest.fixture
def example() -> dict[str, Any]:
    return run_block("broker-example")


def test_example_uses_no_ringbus_client_code() -> None:
    imported: set[str] = set()
    from_ringbus: set[str] = set()
    for node in ast.walk(ast.parse(fenced_block("broker-example"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            if node.module == "ringbus":
                from_ringbus.update(alias.name for alias in node.names)
    assert imported <= {"os", "msgspec", "zmq", "ringbus"}
    assert from_ringbus <= {"Message", "codec"}  # the message frames only; the commands are built by hand


def test_example_declares_sends_fetches_and_acks(broker: Broker, example: dict[str, Any],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    sent_id, message, stats = example["main"](broker.endpoint)
    assert message.id == sent_id
    assert bytes(message.body) == b"resize img-1.png" and message.key == "img-1" and message.attempts == 0
    assert (stats["depth"], stats["in_flight"], stats["sent"], stats["acked"]) == (0, 0, 1, 1)
    assert broker.queues.get("jobs").options.max_attempts == 3
    assert broker.counters["malformed"] == broker.counters["unknown_command"] == broker.counters["errors"] == 0
    out = capsys.readouterr().out
    assert "beat every 1.0 s" in out and "acked 1" in out


def test_part_one_frames_travel_through_the_broker(broker: Broker, example: dict[str, Any]) -> None:
    """A message built without ringbus (the first example's ringbus_frames) is stored and delivered as sent."""
    frames_of = run_block("protocol-example")["ringbus_frames"]
    call, deliveries = example["call"], example["deliveries"]

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.endpoint)
    try:
        assert call(sock, b"DECLARE", {"name": "raw"})[0] == {"created": True}
        assert call(sock, b"DECLARE", {"name": "raw"})[0] == {"created": False}
        sent = frames_of(b"x" * 20_000, key="k", priority=3, headers={"lang": "en"})
        mid = call(sock, b"SEND", {"queue": "raw"}, *sent)[0]["id"]
        reply, frames = call(sock, b"FETCH", {"queue": "raw", "session": "doc-test", "max": 5, "wait": 5.0})
        assert frames == sent  # a first delivery is the very frames that were sent
        [(tag, message)] = deliveries(reply, frames)
        assert (message.id, message.key, message.priority, message.headers) == (mid, "k", 3, {"lang": "en"})
        assert call(sock, b"ACK", {"queue": "raw", "tags": [tag]})[0] == {"stale": 0}  # with a request id: a reply
        assert call(sock, b"ACK", {"queue": "raw", "tags": [tag]})[0] == {"stale": 1}
        with pytest.raises(RuntimeError, match="NotFound"):
            call(sock, b"SEND", {"queue": "missing"}, *sent)
        waited, frames = call(sock, b"FETCH", {"queue": "raw", "session": "doc-test", "wait": 0.2})
        assert waited == {"tags": [], "frames": [], "inline": []} and frames == []
    finally:
        sock.close()


def test_a_batch_mixes_inline_and_framed_messages_as_documented(broker: Broker, example: dict[str, Any]) -> None:
    """`frames: [0, 2, 0]` with `inline: [a, b]` and frames `h, body`: the messages are [a], [h, body] and [b]."""
    call, deliveries = example["call"], example["deliveries"]

    a, b = codec.encode(Message(b"small a")), codec.encode(Message(b"small b"))
    big = codec.encode(Message(b"y" * 100_000))
    assert len(a) == len(b) == 1 and len(big) == 2
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.endpoint)
    try:
        call(sock, b"DECLARE", {"name": "batch"})
        ids = call(sock, b"SENDN", {"queue": "batch", "frames": [0, 2, 0], "inline": [a[0], b[0]]}, *big)[0]["ids"]
        reply, frames = call(sock, b"FETCH", {"queue": "batch", "session": "doc-test", "max": 10})
        assert reply["frames"] == [0, 2, 0] and reply["inline"] == [a[0], b[0]]
        got = [message for _, message in deliveries(reply, frames)]
        assert [m.id for m in got] == ids
        assert [bytes(m.body) for m in got] == [b"small a", b"y" * 100_000, b"small b"]
    finally:
        sock.close()


def test_an_event_is_laid_out_as_documented(broker: Broker, example: dict[str, Any]) -> None:
    """`RBB1 | EVT | token | {dropped, frames, inline} | message frames ...`, the topic in the ringbus-topic header."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(broker.endpoint)
    try:
        token = example["call"](sock, b"SUB", {"pattern": "order.*", "session": "doc-test"})[0]["token"]
        assert isinstance(token, bytes) and len(token) == 8
        example["notify"](sock, b"PUB", {"topic": "order.placed"})  # no message frames: refused, and no reply
        sock.send_multipart([b"RBB1", b"PUB", b"", msgspec.msgpack.encode({"topic": "order.placed"}),
                             *codec.encode(Message(b"placed"))])
        assert sock.poll(5000), "no event"
        signature, status, rid, batch, *frames = sock.recv_multipart()
        assert (signature, status, rid) == (b"RBB1", b"EVT", token)
        batch = msgspec.msgpack.decode(batch)
        assert batch["dropped"] == 0 and batch["frames"] == [0] and frames == []
        event = codec.decode(batch["inline"])
        assert bytes(event.body) == b"placed" and event.headers["ringbus-topic"] == "order.placed"
    finally:
        sock.close()


def test_every_command_and_error_type_is_documented() -> None:
    part = broker_part()
    commands = [value for name, value in vars(protocol.Command).items() if name.isupper()]
    for command in commands:
        assert re.search(rf"^\| `{command.decode()}` \|", part, re.MULTILINE), f"{command!r} has no row"
    for name in protocol._ERRORS:
        assert f"`{name}`" in part, f"error type {name} is not documented"
    for status in (protocol.OK, protocol.ERR, protocol.EVENT):
        assert f"`{status.decode()}`" in part
    assert f"`{protocol.SIGNATURE.decode()}`" in part


def test_limits_and_on_disk_format_match_the_code() -> None:
    part = broker_part()
    assert f"up to {server.BATCH} waiting commands" in part
    assert f"at most {server.MAX_FETCH:,}".replace(",", " ") in part
    assert segment_log.FILE_HEADER == b"RBLOG" + bytes((1, 0, 0))
    assert segment_log.RECORD_HEADER.format == "<IIB"
    kinds = dict(re.findall(r"^\| (\d) \| ([A-Z]+) \|", part, re.MULTILINE))
    names = ("DECLARE", "ENQUEUE", "REMOVE", "REQUEUE", "PUBLISH", "DELIVERED")
    assert kinds == {str(getattr(store, name)): name for name in names}


def run_guide_block(marker: str, endpoint: str) -> dict[str, Any]:
    """A docs/broker.md example, run with its broker address replaced by ``endpoint``."""
    source = fenced_block(marker, GUIDE)
    assert "tcp://127.0.0.1:5555" in source
    namespace: dict[str, Any] = {"__name__": f"guide_{marker.replace('-', '_')}"}
    exec(compile(source.replace("tcp://127.0.0.1:5555", endpoint), str(GUIDE), "exec"), namespace)
    return namespace


def test_guide_quick_start_producer_and_consumer(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    produced = run_guide_block("broker-quickstart-producer", broker.endpoint)
    assert len(produced["mid"]) == 32
    run_guide_block("broker-quickstart-consumer", broker.endpoint)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "processing b'{\"order\": 42}'"  # priority 5 first
    assert sorted(printed[1:]) == ["processing b'{\"order\": 43}'", "processing b'{\"order\": 44}'"]
    with ringbus.connect(broker.endpoint) as bus:  # the last acks may still be on their way: ask until they land
        deadline = time.monotonic() + 10
        while bus.queue_stats("orders").acked < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = bus.queue_stats("orders")
    assert (stats.depth, stats.in_flight, stats.acked) == (0, 0, 3)


def test_guide_request_reply(broker: Broker) -> None:
    namespace = run_guide_block("broker-request-reply", broker.endpoint)
    reply = namespace["reply"]
    assert bytes(reply.body) == b"42.00" and reply.correlation_id is not None
    assert namespace["stop"].is_set()
