"""Settling: ack, nack, reject; redelivery after the visibility timeout or a closed connection; dead letters."""

from __future__ import annotations

import pytest

import ringbus

from .support import dead, nothing, one, unsupported

PAYLOAD = b"work"


def test_nack_requeues_with_attempts_incremented(bus, queue):
    q = queue()
    message_id = bus.send(q, PAYLOAD)
    first = one(bus, q)
    assert first.attempts == 0
    first.nack(requeue=True)
    again = one(bus, q)
    assert (again.id, bytes(again.body), again.attempts) == (message_id, PAYLOAD, 1)
    again.ack()
    nothing(bus, q)


def test_nack_with_delay_hides_the_message_until_then(bus, queue):
    q = queue()
    bus.send(q, PAYLOAD)
    message = one(bus, q)
    if unsupported(bus, "delay", lambda: message.nack(delay=0.5)):
        return
    message.nack(delay=0.5)
    nothing(bus, q, timeout=0)
    again = one(bus, q)
    assert (again.id, again.attempts) == (message.id, 1)


def test_reject_dead_letters(bus, queue):
    q = queue()
    message_id = bus.send(q, PAYLOAD, headers={"mine": 1})
    one(bus, q).reject()
    letter = dead(bus, q, "rejected")
    assert (letter.id, bytes(letter.body), letter.headers.get("mine")) == (message_id, PAYLOAD, 1)
    nothing(bus, q)


def test_nack_without_requeue_dead_letters(bus, queue):
    q = queue()
    message_id = bus.send(q, PAYLOAD)
    one(bus, q).nack(requeue=False)
    assert dead(bus, q, "nacked").id == message_id
    nothing(bus, q)


@pytest.mark.parametrize("settle", [
    lambda m: m.ack(), lambda m: m.reject(), lambda m: m.nack(requeue=False),
], ids=["ack", "reject", "nack-no-requeue"])
def test_settling_twice_raises(bus, queue, settle):
    q = queue()
    bus.send(q, PAYLOAD)
    message = one(bus, q)
    settle(message)
    with pytest.raises(ringbus.RingbusError):
        message.ack()


def test_ack_after_close_raises_and_the_message_comes_back(bus, second_bus, queue):
    q = queue()
    bus.send(q, PAYLOAD)
    message = one(bus, q)
    bus.close()
    with pytest.raises(ringbus.RingbusError):
        message.ack()
    again = one(second_bus, q)
    assert (again.id, again.attempts) == (message.id, 1)


def test_unsettled_message_comes_back_when_its_bus_closes(bus, second_bus, queue):
    q = queue()
    bus.send(q, PAYLOAD)
    message = one(bus, q)
    nothing(second_bus, q)  # in flight: invisible to others
    bus.close()
    again = one(second_bus, q)
    assert (again.id, bytes(again.body), again.attempts) == (message.id, PAYLOAD, 1)


def test_unacked_message_comes_back_after_visibility_timeout(bus, queue):
    q = queue(visibility_timeout=0.2)
    bus.send(q, PAYLOAD)
    message = one(bus, q)
    again = one(bus, q)
    assert (again.id, again.attempts) == (message.id, 1)
    again.ack()
    nothing(bus, q, timeout=0.5)


def test_after_max_attempts_nacks_the_message_is_dead(bus, queue):
    q = queue(max_attempts=3)
    message_id = bus.send(q, PAYLOAD)
    for attempt in range(3):
        message = one(bus, q)
        assert (message.id, message.attempts) == (message_id, attempt)
        message.nack(requeue=True)
    nothing(bus, q)
    assert dead(bus, q, "max_attempts").id == message_id


def test_expired_leases_count_as_attempts(bus, queue):
    q = queue(max_attempts=2, visibility_timeout=0.2)
    message_id = bus.send(q, PAYLOAD)
    assert one(bus, q).attempts == 0
    assert one(bus, q).attempts == 1
    nothing(bus, q, timeout=0.5)  # the second lease expires: no third delivery
    assert dead(bus, q, "max_attempts").id == message_id


def test_custom_dead_letter_queue_is_used(bus, queue):
    letters = queue()
    q = queue(dead_letter=letters)
    message_id = bus.send(q, PAYLOAD)
    one(bus, q).reject()
    assert dead(bus, q, "rejected", dead_letter=letters).id == message_id


def test_stale_ack_does_not_settle_the_redelivered_copy(bus, second_bus, queue):
    q = queue(visibility_timeout=1.0)
    message_id = bus.send(q, PAYLOAD)
    stale = one(bus, q)
    fresh = one(second_bus, q)  # after the lease of `stale` expired
    assert (fresh.id, fresh.attempts) == (message_id, 1)
    try:
        stale.ack()
    except ringbus.RingbusError:
        pass  # refusing the stale ack is fine; so is ignoring it
    stats = bus.queue_stats(q)
    assert (stats.depth, stats.in_flight) == (0, 1)
    fresh.ack()
    stats = bus.queue_stats(q)
    assert (stats.depth, stats.in_flight, stats.dead_lettered) == (0, 0, 0)
    nothing(bus, q)
