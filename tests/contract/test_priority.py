"""Priority: higher first, FIFO within a priority, 0 by default."""

from __future__ import annotations

from ringbus.message import Message

from .support import bodies, take, unsupported


def test_higher_priority_first_fifo_within_equal(bus, queue):
    q = queue()
    if unsupported(bus, "priority", lambda: bus.send(q, b"x", priority=1)):
        return
    for body, priority in [(b"a0", 0), (b"b5", 5), (b"c1", 1), (b"d5", 5), (b"e0", 0), (b"f9", 9)]:
        bus.send(q, body, priority=priority)
    got = take(bus, q, n=6)
    assert bodies(got) == [b"f9", b"b5", b"d5", b"c1", b"a0", b"e0"]
    assert [m.priority for m in got] == [9, 5, 5, 1, 0, 0]


def test_default_priority_is_zero(bus, queue):
    q = queue()
    if unsupported(bus, "priority", lambda: bus.send(q, b"x", priority=1)):
        return
    bus.send(q, b"zero-a")
    bus.send(q, b"one", priority=1)
    bus.send(q, b"zero-b", priority=0)
    bus.send(q, Message(b"two", priority=2))
    got = take(bus, q, n=4)
    assert bodies(got) == [b"two", b"one", b"zero-a", b"zero-b"]
    assert got[2].priority == 0
