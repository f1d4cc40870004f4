"""Connecting and closing: context manager, Closed after close, idempotent close, bad urls."""

from __future__ import annotations

import threading

import pytest

import ringbus
from ringbus.bus import connect

from .support import FEATURES, unsupported

CALLS = {
    "declare_queue": lambda bus, q, n: bus.declare_queue(q),
    "send": lambda bus, q, n: bus.send(q, b"x"),
    "send_many": lambda bus, q, n: bus.send_many(q, [b"x"]),
    "receive": lambda bus, q, n: bus.receive(q, timeout=0),
    "consume": lambda bus, q, n: next(iter(bus.consume(q, timeout=0))),
    "queue_stats": lambda bus, q, n: bus.queue_stats(q),
    "queues": lambda bus, q, n: bus.queues(),
    "publish": lambda bus, q, n: bus.publish(n.topic("x"), b"x"),
    "subscribe": lambda bus, q, n: bus.subscribe(n.topic("x")),
    "request": lambda bus, q, n: bus.request(n.service(), b"x", timeout=0.1),
    "serve": lambda bus, q, n: bus.serve(n.service(), lambda m: b"", stop=threading.Event()),
}


def test_context_manager_closes(url):
    with connect(url) as bus:
        assert not bus.closed
    assert bus.closed
    assert "closed" in repr(bus)


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
def test_every_method_raises_closed_after_close(bus, names, call):
    q = names.queue()
    if not unsupported(bus, "queues"):
        bus.declare_queue(q)
    bus.close()
    with pytest.raises(ringbus.Closed):
        call(bus, q, names)


def test_close_is_idempotent(bus):
    bus.close()
    bus.close()
    assert bus.closed


def test_url_must_name_a_known_scheme():
    with pytest.raises(ValueError):
        connect("nope://x")
    with pytest.raises(TypeError):
        connect(123)


def test_a_backend_without_queues_names_the_feature_in_every_queue_call(bus, names):
    """mqtt:// (topics only) refuses each queue method with ringbus.Unsupported saying what and why."""
    if not unsupported(bus, "queues"):
        return
    q = names.queue()
    for name in ("declare_queue", "send", "send_many", "receive", "consume", "queue_stats"):
        with pytest.raises(ringbus.Unsupported, match="queues"):
            CALLS[name](bus, q, names)
    assert bus.queues() == []


def test_declared_unsupported_features_are_known_names(bus):
    declared = getattr(bus, "unsupported_features", frozenset())
    assert isinstance(declared, frozenset)
    assert declared <= FEATURES


def test_memory_names_are_isolated(names):
    with connect(f"memory://{names.queue()}") as a, connect(f"memory://{names.queue()}") as b:
        q = names.queue()
        a.declare_queue(q)
        a.send(q, b"x")
        assert q not in b.queues()
        with pytest.raises(ringbus.NotFound):
            b.receive(q, timeout=0)
