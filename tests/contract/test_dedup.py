"""dedup_id: a repeat within the queue's window is accepted (same id returned) but not enqueued again."""

from __future__ import annotations

import time

import pytest

from .support import nothing, one, unsupported


@pytest.fixture
def q(bus, queue):
    """A fresh queue; None (the test returns) when the backend declares dedup unsupported (and refuses a dedup_id)."""
    name = queue()
    return None if unsupported(bus, "dedup", lambda: bus.send(name, b"x", dedup_id="probe")) else name


def test_repeated_dedup_id_enqueues_once(bus, q):
    if q is None:
        return
    first = bus.send(q, b"one", dedup_id="d1")
    assert bus.send(q, b"one again", dedup_id="d1") == first
    message = one(bus, q)
    assert (message.id, bytes(message.body)) == (first, b"one")
    nothing(bus, q)


def test_other_dedup_id_is_enqueued(bus, q):
    if q is None:
        return
    first, second = bus.send(q, b"one", dedup_id="d1"), bus.send(q, b"two", dedup_id="d2")
    assert first != second
    assert [one(bus, q).id, one(bus, q).id] == [first, second]


def test_repeat_after_the_message_was_acked_is_still_dropped_within_the_window(bus, q):
    if q is None:
        return
    first = bus.send(q, b"one", dedup_id="d1")
    one(bus, q).ack()
    assert bus.send(q, b"one again", dedup_id="d1") == first
    nothing(bus, q)


def test_repeat_after_the_window_is_enqueued(bus, queue, q):
    if q is None:
        return
    short = queue(dedup_window=0.2)
    first = bus.send(short, b"one", dedup_id="d1")
    time.sleep(0.4)
    later = bus.send(short, b"one later", dedup_id="d1")
    assert later != first
    assert [one(bus, short).id, one(bus, short).id] == [first, later]
