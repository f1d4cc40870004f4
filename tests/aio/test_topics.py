"""Topics on the asyncio API: patterns, the three ways to hold a subscription, fan-out, durable groups."""

from __future__ import annotations

import asyncio

import pytest

import ringbus
from ringbus.bus import TOPIC_HEADER
from ringbus.message import Message

from .support import WAIT, nothing, one, refused, take

pytestmark = pytest.mark.asyncio

PUBLISHED = [("order",), ("order", "placed"), ("order", "paid"), ("order", "placed", "eu"), ("other", "placed")]


@pytest.mark.parametrize("pattern, matching", [
    (("order", "*"), [("order", "placed"), ("order", "paid")]),
    (("order", "#"), [("order",), ("order", "placed"), ("order", "paid"), ("order", "placed", "eu")]),
    (("*", "placed"), [("order", "placed"), ("other", "placed")]),
], ids=["star", "hash", "leading-star"])
async def test_subscriber_receives_matching_topics_only(bus, names, pattern, matching):
    async with bus.subscribe(names.topic(*pattern)) as sub:
        for words in PUBLISHED:
            await bus.publish(names.topic(*words), b"x")
        got = await take(sub, n=len(matching))
        await nothing(sub)
    assert sorted(m.headers[TOPIC_HEADER] for m in got) == sorted(names.topic(*w) for w in matching)


@pytest.mark.adapters
async def test_awaited_subscription_keeps_message_fields(bus, names):
    topic = names.topic("fields")
    sub = await bus.subscribe(topic)
    sent = Message(b"body", key="k", headers={"h": 1})
    assert await bus.publish(topic, sent) == sent.id
    other = await bus.publish(topic, b"more", headers={"x": True}, key="k2")
    first, second = await take(sub, n=2)
    assert (first.id, bytes(first.body), first.key, first.headers["h"]) == (sent.id, b"body", "k", 1)
    assert first.headers[TOPIC_HEADER] == topic
    assert (second.id, second.key, second.headers["x"]) == (other, "k2", True)
    await first.ack()  # a no-op on an ephemeral subscription
    await sub.close()
    await sub.close()
    with pytest.raises(ringbus.Closed):
        await sub.receive(timeout=0)


@pytest.mark.adapters
async def test_async_for_over_subscribe_and_fan_out(bus, second_bus, names):
    topic = names.topic("fanout")
    ready = asyncio.Event()

    async def listen(source) -> list[bytes]:
        got = []
        subscribing = source.subscribe(topic)
        await subscribing  # subscribed before anything is published
        ready.set()
        async for message in subscribing:  # the same subscription, iterated; closed when the loop ends
            got.append(bytes(message.body))
            if len(got) == 3:
                break
        return got

    listeners = [asyncio.ensure_future(listen(bus)), asyncio.ensure_future(listen(second_bus))]
    await asyncio.wait_for(ready.wait(), WAIT)
    await asyncio.sleep(0.1)  # both subscribed
    await bus.publish_many(topic, [b"0", b"1", b"2"])
    results = await asyncio.wait_for(asyncio.gather(*listeners), WAIT)
    assert results == [[b"0", b"1", b"2"]] * 2


@pytest.mark.adapters
async def test_durable_group_keeps_messages_and_needs_acks(bus, second_bus, names):
    if await refused(bus, "durable_subscription",
                     lambda: bus.subscribe(names.topic("d"), group=names.group(), durable=True)._start()):
        return
    topic, group = names.topic("durable"), names.group()
    async with bus.subscribe(topic, group=group, durable=True) as sub:
        await second_bus.publish(topic, b"kept")
        message = await one(sub)
        await message.nack(requeue=True)
        again = await one(sub)
        assert (again.id, again.attempts, bytes(again.body)) == (message.id, 1, b"kept")
        await again.ack()
        await nothing(sub)


@pytest.mark.parametrize("call", [
    lambda bus: bus.subscribe("a..b"), lambda bus: bus.subscribe("x", durable=True),
    lambda bus: bus.subscribe("x", start="earliest"), lambda bus: bus.subscribe("x", start="middle"),
], ids=["bad-pattern", "durable-without-group", "earliest-ephemeral", "bad-start"])
async def test_invalid_subscriptions_raise_at_once(bus, call):
    with pytest.raises(ValueError):
        call(bus)


async def test_invalid_topic_raises(bus):
    with pytest.raises(ValueError):
        await bus.publish("a.*", b"x")
