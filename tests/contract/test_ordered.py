"""ordered_by_key: at most one unsettled message per key, in send order; messages without a key go freely."""

from __future__ import annotations

import pytest

from .support import nothing, one


@pytest.fixture
def q(queue):
    """A queue with ordered_by_key; None (the test returns) when the backend declares it unsupported."""
    return queue(needs="ordered_by_key", ordered_by_key=True)


def send(bus, q, *keys):
    """One message per key (None: no key), bodies numbered; returns the ids."""
    return [bus.send(q, b"%d" % i, key=key) for i, key in enumerate(keys)]


def test_same_key_waits_for_the_previous_to_settle(bus, q):
    if q is None:
        return
    k1, k2, j1 = send(bus, q, "k", "k", "j")
    first = one(bus, q)
    assert first.id == k1
    assert one(bus, q).id == j1
    nothing(bus, q)  # k2 waits while k1 is unsettled
    first.ack()
    assert one(bus, q).id == k2


def test_nacked_message_keeps_its_place_in_its_key(bus, q):
    if q is None:
        return
    k1, k2 = send(bus, q, "k", "k")
    one(bus, q).nack(requeue=True)
    again = one(bus, q)
    assert (again.id, again.attempts) == (k1, 1)
    nothing(bus, q)
    again.ack()
    assert one(bus, q).id == k2


def test_messages_without_key_are_free(bus, q):
    if q is None:
        return
    ids = send(bus, q, "k", None, None)
    got = [one(bus, q) for _ in ids]  # none settled
    assert sorted(m.id for m in got) == sorted(ids)
