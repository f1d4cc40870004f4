"""max_length: refuse sends when full, or move the oldest waiting message to the dead-letter queue."""

from __future__ import annotations

import queue as stdlib_queue

import pytest

import ringbus

from .support import bodies, dead, nothing, one, take


def test_reject_overflow_raises_full(bus, queue):
    q = queue(needs="max_length", max_length=3, overflow="reject")
    if q is None:
        return
    for i in range(3):
        bus.send(q, b"%d" % i)
    with pytest.raises(ringbus.Full) as raised:
        bus.send(q, b"one too many")
    assert isinstance(raised.value, stdlib_queue.Full)
    assert bodies(take(bus, q, n=3)) == [b"0", b"1", b"2"]
    nothing(bus, q)


def test_in_flight_messages_do_not_count_towards_max_length(bus, queue):
    q = queue(needs="max_length", max_length=2, overflow="reject")
    if q is None:
        return
    bus.send(q, b"0")
    bus.send(q, b"1")
    one(bus, q)  # in flight now: one waiting
    bus.send(q, b"2")
    with pytest.raises(ringbus.Full):
        bus.send(q, b"3")


def test_drop_oldest_dead_letters_the_oldest(bus, queue):
    q = queue(needs="max_length", max_length=3, overflow="drop_oldest")
    if q is None:
        return
    ids = [bus.send(q, b"%d" % i) for i in range(5)]
    assert bodies(take(bus, q, n=3)) == [b"2", b"3", b"4"]
    nothing(bus, q)
    assert [dead(bus, q, "overflow").id for _ in range(2)] == ids[:2]
