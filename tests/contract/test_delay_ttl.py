"""Delayed sends, and messages that expire to the dead-letter queue (per message, or the queue's default ttl)."""

from __future__ import annotations

import time

from .support import dead, nothing, one, unsupported


def test_delayed_message_is_not_receivable_before_its_delay(bus, queue):
    q = queue()
    if unsupported(bus, "delay", lambda: bus.send(q, b"later", delay=0.5)):
        return
    message_id = bus.send(q, b"later", delay=0.5)
    nothing(bus, q, timeout=0)
    message = one(bus, q)
    assert (message.id, bytes(message.body), message.attempts) == (message_id, b"later", 0)


def test_delay_does_not_hold_back_other_messages(bus, queue):
    q = queue()
    if unsupported(bus, "delay", lambda: bus.send(q, b"later", delay=60)):
        return
    bus.send(q, b"later", delay=60)
    bus.send(q, b"now")
    assert bytes(one(bus, q).body) == b"now"
    nothing(bus, q)


def test_message_ttl_expires_to_dead_letters(bus, queue):
    q = queue()
    if unsupported(bus, "ttl", lambda: bus.send(q, b"stale", ttl=0.1)):
        return
    message_id = bus.send(q, b"stale", ttl=0.1)
    time.sleep(0.3)
    nothing(bus, q)
    letter = dead(bus, q, "expired")
    assert (letter.id, bytes(letter.body)) == (message_id, b"stale")


def test_queue_ttl_is_the_default_and_a_message_ttl_overrides_it(bus, queue):
    q = queue(needs="ttl", ttl=0.1)
    if q is None:
        return
    doomed = bus.send(q, b"default ttl")
    kept = bus.send(q, b"own ttl", ttl=60)
    time.sleep(0.3)
    message = one(bus, q)
    assert message.id == kept
    nothing(bus, q)
    assert dead(bus, q, "expired").id == doomed
