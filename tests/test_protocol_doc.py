"""docs/protocol.md: its pyzmq-only example produces frames ringbus decodes, and its hex dump is exact."""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Any

import numpy as np
import pytest
import zmq

from ringbus import codec
from ringbus.message import Message

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def fenced_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in docs/protocol.md."""
    match = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)\n```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert match, f"docs/protocol.md has no code block after <!-- {marker} -->"
    return match.group(1)


@pytest.fixture(scope="module")
def example() -> dict[str, Any]:
    """The names the doc's example script defines, executed as a module (not as __main__)."""
    source = fenced_block("protocol-example")
    namespace: dict[str, Any] = {"__name__": "protocol_example"}
    exec(compile(source, str(DOC), "exec"), namespace)
    return namespace


def test_example_imports_neither_ringbus_nor_msgpack():
    imported = set()
    for node in ast.walk(ast.parse(fenced_block("protocol-example"))):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"struct", "time", "uuid", "zmq"}


def test_example_frames_decode(example):
    frames = example["ringbus_frames"](b"payload", key="k", priority=-3, headers={"a": 1, "b": 2.5, "c": None},
                                       meta={"note": ["x", True]})
    msg = codec.decode(frames)
    assert msg.body == b"payload"
    assert (msg.key, msg.priority, msg.attempts) == ("k", -3, 0)
    assert msg.headers == {"a": 1, "b": 2.5, "c": None}
    assert msg.meta == {"note": ["x", True]}
    assert len(msg.id) == 32 and msg.content_type == "application/octet-stream"


def test_example_sends_messages_ringbus_receives(example):
    ctx = zmq.Context.instance()  # the example sends through the same shared context
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    try:
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        example["send"](f"tcp://127.0.0.1:{port}")
        received = []
        for _ in range(2):
            assert pull.poll(10_000), "the example's message did not arrive within 10 s"
            received.append(codec.decode(pull.recv_multipart(copy=False), copy=False))
    finally:
        pull.close(0)
    text, array = received
    assert bytes(text.body) == b"hello"
    assert (text.key, text.priority, text.headers) == ("greeting", 5, {"lang": "en", "retry": False})
    assert text.value() == b"hello"
    values = array.value()
    assert values.dtype == np.dtype("<f8")
    assert values.tolist() == [1.0, 2.5, -4.0]


def test_hexdump_is_the_encoding_of_the_documented_message():
    lines = fenced_block("protocol-hexdump").splitlines()
    documented = bytes.fromhex(" ".join(re.match(r"((?:[0-9a-f]{2} ?)*)", line).group(1) for line in lines))
    msg = Message(b"hello", id="0123456789abcdef0123456789abcdef", key="order-42", priority=5,
                  headers={"lang": "en"}, timestamp=1700000000.5, content_type="text/plain; charset=utf-8")
    header = codec.encode(msg, inline_max=-1)[0]  # the documented layout: body in its own frame
    assert documented == header
    assert f"({len(header)} bytes)" in DOC.read_text(encoding="utf-8")
