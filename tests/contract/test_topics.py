"""Topics: patterns, ephemeral and durable subscriptions, groups, replay, and invalid topics."""

from __future__ import annotations

import pytest

from ringbus.bus import TOPIC_HEADER
from ringbus.message import Message

from .support import QUIET, WAIT, bodies, in_thread, nothing, one, take, unsupported

PUBLISHED = [("order",), ("order", "placed"), ("order", "paid"), ("order", "placed", "eu"), ("orders", "x"),
             ("other", "placed")]


def received_topics(sub, n):
    got = take(sub, n=n)
    nothing(sub)
    return sorted(m.headers[TOPIC_HEADER] for m in got)


def test_publish_without_subscribers_returns_an_id(bus, names):
    message_id = bus.publish(names.topic("nobody"), b"x")
    assert isinstance(message_id, str) and message_id


@pytest.mark.parametrize("pattern, matching", [
    (("order", "*"), [("order", "placed"), ("order", "paid")]),
    (("order", "#"), [("order",), ("order", "placed"), ("order", "paid"), ("order", "placed", "eu")]),
    (("#",), PUBLISHED),
    (("*", "placed"), [("order", "placed"), ("other", "placed")]),
    (("order", "placed"), [("order", "placed")]),
], ids=["star", "hash", "all", "leading-star", "exact"])
def test_subscriber_receives_matching_topics_only(bus, names, pattern, matching):
    with bus.subscribe(names.topic(*pattern)) as sub:
        for words in PUBLISHED:
            bus.publish(names.topic(*words), b"x")
        assert received_topics(sub, len(matching)) == sorted(names.topic(*words) for words in matching)


def test_bare_hash_receives_everything(bus, names):
    with bus.subscribe("#") as sub:
        message_id = bus.publish(names.topic("anything", "at", "all"), b"x")
        for _ in range(1000):  # a shared broker may carry other publications too
            message = one(sub)
            if message.id == message_id:
                break
        assert message.id == message_id
        assert message.headers[TOPIC_HEADER] == names.topic("anything", "at", "all")


def test_message_fields_survive_publish(bus, names):
    topic = names.topic("fields")
    with bus.subscribe(topic) as sub:
        sent = Message(b"body", key="k", headers={"h": 1, "s": "v"})
        assert bus.publish(topic, sent) == sent.id
        other = bus.publish(topic, b"more", headers={"x": True}, key="k2")
        first, second = take(sub, n=2)
    assert (first.id, bytes(first.body), first.key) == (sent.id, b"body", "k")
    assert (first.headers["h"], first.headers["s"], first.headers[TOPIC_HEADER]) == (1, "v", topic)
    assert (second.id, second.key, second.headers["x"]) == (other, "k2", True)
    first.ack()  # a no-op on an ephemeral subscription


def test_every_ephemeral_subscriber_gets_every_message(bus, second_bus, names):
    topic = names.topic("fanout")
    with bus.subscribe(topic) as one_sub, second_bus.subscribe(topic) as other_sub, \
            bus.subscribe(topic) as same_bus_sub:
        ids = [bus.publish(topic, b"%d" % i) for i in range(3)]
        for sub in (one_sub, other_sub, same_bus_sub):
            assert [m.id for m in take(sub, n=3)] == ids
            nothing(sub)


def test_subscriber_does_not_get_earlier_publications(bus, names):
    topic = names.topic("late")
    bus.publish(topic, b"before")
    with bus.subscribe(topic) as sub:
        after = bus.publish(topic, b"after")
        assert one(sub).id == after
        nothing(sub)


def test_group_members_share_messages(bus, second_bus, names):
    topic, group = names.topic("shared"), names.group()
    with bus.subscribe(topic, group=group) as a, second_bus.subscribe(topic, group=group) as b, \
            bus.subscribe(topic) as everything:
        ids = [bus.publish(topic, b"%d" % i) for i in range(20)]
        assert [m.id for m in take(everything, n=20)] == ids  # they were all published
        got = []
        for sub in (a, b):
            while (message := sub.receive(timeout=QUIET)) is not None:
                got.append(message.id)
    assert sorted(got) == sorted(ids)


def test_durable_needs_a_group(bus, names):
    with pytest.raises(ValueError):
        bus.subscribe(names.topic("x"), durable=True)


def durable(bus, pattern, group, **options):
    if unsupported(bus, "durable_subscription",
                   lambda: bus.subscribe(pattern, group=group, durable=True, **options)):
        return None
    return bus.subscribe(pattern, group=group, durable=True, **options)


def test_durable_group_keeps_messages_while_away(bus, names):
    topic, group = names.topic("durable"), names.group()
    sub = durable(bus, topic, group)
    if sub is None:
        return
    assert (sub.pattern, sub.group, sub.durable, sub.dropped) == (topic, group, True, 0)
    sub.close()
    ids = [bus.publish(topic, b"%d" % i) for i in range(5)]
    with durable(bus, topic, group) as back:
        got = take(back, n=5)
        assert [m.id for m in got] == ids
        for message in got:
            message.ack()
        nothing(back)
    with durable(bus, topic, group) as again:
        nothing(again)  # acked: gone


def test_durable_unacked_message_comes_back(bus, second_bus, names):
    topic, group = names.topic("durable"), names.group()
    sub = durable(bus, topic, group)
    if sub is None:
        return
    message_id = bus.publish(topic, b"x")
    assert one(sub).id == message_id
    bus.close()  # unsettled messages go back to their queues (Subscription.close alone need not return them)
    with durable(second_bus, topic, group) as back:
        message = one(back)
        assert (message.id, message.attempts) == (message_id, 1)
        message.ack()


def test_earliest_replays_retained_publications(bus, names):
    topic = names.topic("replay", "a")
    ids = [bus.publish(topic, b"%d" % i) for i in range(3)]
    bus.publish(names.topic("replay-not", "a"), b"other topic")
    pattern, group = names.topic("replay", "#"), names.group()
    if unsupported(bus, "durable_subscription") or unsupported(
            bus, "replay", lambda: bus.subscribe(pattern, group=group, durable=True, start="earliest")):
        return
    with bus.subscribe(pattern, group=group, durable=True, start="earliest") as replay:
        got = take(replay, n=3)
        assert [m.id for m in got] == ids
        assert got[0].headers[TOPIC_HEADER] == topic
        nothing(replay)


def test_latest_durable_group_starts_empty(bus, names):
    topic = names.topic("latest")
    bus.publish(topic, b"before")
    sub = durable(bus, topic, names.group())
    if sub is None:
        return
    with sub:
        nothing(sub)
        after = bus.publish(topic, b"after")
        assert one(sub).id == after


@pytest.mark.parametrize("topic", ["a..b", "", "a.*", "a.#", ".a", "a.", "a b"])
def test_invalid_topic_raises_value_error(bus, topic):
    with pytest.raises(ValueError):
        bus.publish(topic, b"x")


@pytest.mark.parametrize("pattern", ["a.b*", "", "a..b", "a.#x"])
def test_invalid_pattern_raises_value_error(bus, pattern):
    with pytest.raises(ValueError):
        bus.subscribe(pattern)


def test_ephemeral_subscription_attributes(bus, names):
    pattern = names.topic("*")
    with bus.subscribe(pattern) as sub:
        assert (sub.pattern, sub.group, sub.durable) == (pattern, None, False)
        assert isinstance(sub.dropped, int) and sub.dropped >= 0


def test_iteration_yields_messages_and_ends_when_closed(bus, names):
    topic = names.topic("iter")
    sub = bus.subscribe(topic)
    message_id = bus.publish(topic, b"x")
    assert next(iter(sub)).id == message_id
    sub.close()
    sub.close()  # idempotent
    assert in_thread(lambda: list(sub), timeout=WAIT) == []


def test_subscription_ends_when_its_bus_closes(bus, names):
    sub = bus.subscribe(names.topic("x"))
    bus.close()
    assert in_thread(lambda: list(sub), timeout=WAIT) == []


def test_bodies_come_back(bus, names):
    topic = names.topic("bodies")
    with bus.subscribe(topic) as sub:
        for body in (b"a", bytearray(b"b"), memoryview(b"c")):
            bus.publish(topic, body)
        assert bodies(take(sub, n=3)) == [b"a", b"b", b"c"]
