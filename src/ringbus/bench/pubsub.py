"""Publisher-subscriber benchmarks (issue 6): fan-out to 4 subscriber processes, 64-byte events.

Two comparisons, every contender in the same run, one publisher process and
four subscriber processes each, timed from the publisher's first publish
until the last subscriber is done (set-up - the broker, the processes, the
subscriptions - stays out):

1. ephemeral: :class:`~ringbus.patterns.pubsub.Publisher` (``publish_many``
   x100) and four ephemeral :class:`~ringbus.patterns.pubsub.Subscriber`
   processes on ``bench.#`` through the embedded broker, beside Redis pub/sub
   driven by redis-py (``PUBLISH`` pipelined x100, four ``PSUBSCRIBE bench.*``
   clients). "Done" is the n-th event handed to the handler. Target >= 2x.
2. durable: four durable groups, one :class:`Subscriber` process each (ack
   after the handler), beside Redis Streams with one consumer group per
   subscriber (``XADD`` pipelined x100; ``XREADGROUP`` x100 and a pipelined
   ``XACK`` per entry; AOF on, ``appendfsync everysec``, like the broker
   suite). "Done" is the server having applied the n-th ack. Target >= 1x.

The broker runs as a child process (``ringbus broker``, fsync=batch, TCP
loopback), a fresh one per round. Redis is 127.0.0.1:6379; without redis-py
or a server its rows are left out with a note (:func:`missing_peers`). An
ephemeral subscriber that falls behind drops events by design: a round where
one did is reported in a note (and its time is the time of its last event).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ringbus.bench._harness import Case
from ringbus.bench.broker import (
    CHILD_TIMEOUT,
    NOTES,
    SIZE,
    Ready,
    _broker,
    _Children,
    _name,
    _note,
    _redis,
    _redis_stream,
    now,
    redis_missing,
)
from ringbus.bus import connect
from ringbus.message import Message
from ringbus.patterns.pubsub import Publisher, Subscriber

__all__ = ["cases", "missing_peers", "ringbus_ephemeral", "ringbus_durable", "redis_pubsub", "redis_streams"]

SUBSCRIBERS = 4
BATCH = 1000  # events per publish_many / per Redis pipeline (the broker suite's 100 leaves ringbus bound by commits)
PREFETCH = 1000  # durable subscriber credit
QUIET = 5.0  # seconds without an event after which an ephemeral subscriber stops waiting (it dropped some)
POLL = 0.002  # seconds between two looks at a counter (a sleep, not a spin)


def missing_peers() -> list[str]:
    """Notes for the table: Redis left out, settings changed for the run, drops seen."""
    reason = redis_missing()
    return ([reason] if reason else []) + list(NOTES)


def _wait(done: Any, seconds: float) -> bool:
    deadline = now() + seconds
    while not done():
        if now() > deadline:
            return False
        time.sleep(POLL)
    return True


# --- ringbus ---------------------------------------------------------------------------

def _in_batches(n: int, send: Any) -> float:
    """``send(k)`` for batches of up to BATCH until n are sent; return the time of the first."""
    t0 = now()
    for start in range(0, n, BATCH):
        send(min(BATCH, n - start))
    return t0


def _publisher(ready: Ready, stop: Any, url: str, topic: str, n: int) -> float:
    with connect(url) as bus:
        publisher = Publisher(bus)
        bodies = [bytes(SIZE)] * BATCH
        ready()
        return _in_batches(n, lambda k: publisher.publish_many(topic, bodies[:k]))


class _Count:
    """The subscribers' handler: counts, and notes the time of the n-th event."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.got = 0
        self.t1 = 0.0
        self.done = threading.Event()

    def __call__(self, message: Message) -> None:
        self.got += 1
        if self.got == self.n:
            self.t1 = now()
            self.done.set()


def _ephemeral_subscriber(ready: Ready, stop: Any, url: str, n: int) -> tuple[float, int, int]:
    count = _Count(n)
    subscriber = Subscriber(url, "bench.#", count).start()
    ready()
    last = -1
    while not count.done.wait(QUIET):  # no event for QUIET seconds: the rest was dropped
        if count.got == last:
            break
        last = count.got
    dropped = subscriber.stats().dropped
    subscriber.stop()
    return (count.t1 if count.done.is_set() else now() - QUIET), count.got, dropped


def _durable_subscriber(ready: Ready, stop: Any, url: str, group: str, n: int) -> float:
    count = _Count(n)
    subscriber = Subscriber(url, "bench.#", count, group=group, durable=True, prefetch=PREFETCH).start()
    bus = connect(url)
    ready()
    if not count.done.wait(CHILD_TIMEOUT):
        raise TimeoutError(f"ringbus: {count.got} of {n} events within {CHILD_TIMEOUT:g} s")
    # Done when the broker has applied every ack (acks are held up to 50 ms and sent in batches).
    if not _wait(lambda: bus.queue_stats(f"@{group}").acked >= n, CHILD_TIMEOUT):
        raise TimeoutError("ringbus: the broker did not apply every ack")
    t1 = now()
    subscriber.stop()
    bus.close()
    return t1


def _fan_out(url: str, n: int, subscriber: Any, groups: list[str] | None) -> float:
    with _Children() as children:
        for i in range(SUBSCRIBERS):
            kwargs: dict[str, Any] = {"url": url, "n": n}
            if groups is not None:
                kwargs["group"] = groups[i]
            children.start(f"sub{i}", subscriber, **kwargs)
        children.start("publisher", _publisher, url=url, topic="bench.tick", n=n)
        children.release()
        out = children.collect()
    t0: float = out.pop("publisher")
    return max(_ended(label, value, n) for label, value in out.items()) - t0


def _ended(label: str, value: Any, n: int) -> float:
    if isinstance(value, tuple):  # an ephemeral subscriber: (t1, got, dropped)
        t1, got, dropped = value
        if got < n:
            _note(f"an ephemeral subscriber ({label}) got {got} of {n} events ({dropped} dropped): the publisher "
                  "outran it; its time is that of its last event")
        return float(t1)
    return float(value)


def ringbus_ephemeral(n: int) -> float:
    with _broker() as url:
        return _fan_out(url, n, _ephemeral_subscriber, None)


def ringbus_durable(n: int) -> float:
    with _broker() as url:
        groups = [f"bench{i}" for i in range(SUBSCRIBERS)]
        with connect(url) as bus:
            for group in groups:  # the groups exist before the first publish
                bus.subscribe("bench.#", group=group, durable=True)
        return _fan_out(url, n, _durable_subscriber, groups)


# --- Redis ---------------------------------------------------------------------------------

def _pipelined(client: Any, k: int, command: str, *args: Any) -> Any:
    pipe = client.pipeline(transaction=False)
    call = getattr(pipe, command)
    for _ in range(k):
        call(*args)
    return pipe.execute()


def _redis_publisher(ready: Ready, stop: Any, channel: str, n: int) -> float:
    client = _redis()
    ready()
    t0 = _in_batches(n, lambda k: _pipelined(client, k, "publish", channel, bytes(SIZE)))
    client.close()
    return t0


def _redis_subscriber(ready: Ready, stop: Any, pattern: str, n: int) -> tuple[float, int, int]:
    client = _redis()
    pubsub = client.pubsub()
    pubsub.psubscribe(pattern)
    confirm = pubsub.get_message(timeout=CHILD_TIMEOUT)
    if confirm is None or confirm["type"] != "psubscribe":
        raise TimeoutError(f"Redis did not confirm the PSUBSCRIBE (got {confirm!r})")
    ready()
    got = 0
    t1 = now()
    while got < n:
        message = pubsub.get_message(timeout=QUIET)
        if message is None:  # nothing for QUIET seconds: the rest is gone
            break
        got += 1
        t1 = now()
    pubsub.close()
    client.close()
    return t1, got, n - got


def redis_pubsub(n: int) -> float:
    channel = _name("channel").replace("-", ".")
    with _Children() as children:
        for i in range(SUBSCRIBERS):
            children.start(f"sub{i}", _redis_subscriber, pattern=channel.rsplit(".", 1)[0] + ".*", n=n)
        children.start("publisher", _redis_publisher, channel=channel, n=n)
        children.release()
        out = children.collect()
    t0: float = out.pop("publisher")
    return max(_ended(label, value, n) for label, value in out.items()) - t0


def _redis_stream_publisher(ready: Ready, stop: Any, stream: str, n: int) -> float:
    client = _redis()
    ready()
    t0 = _in_batches(n, lambda k: _pipelined(client, k, "xadd", stream, {"b": bytes(SIZE)}))
    client.close()
    return t0


def _redis_group_member(ready: Ready, stop: Any, stream: str, group: str, n: int) -> float:
    """One subscriber: its own consumer group on the stream; one XACK per entry, like one ack per event."""
    client = _redis()
    ready()
    left = n
    block = int(CHILD_TIMEOUT * 1000)
    while left > 0:
        batch = client.xreadgroup(group, "member", {stream: ">"}, count=BATCH, block=block)
        if not batch:
            raise TimeoutError(f"Redis group {group}: nothing for {CHILD_TIMEOUT:g} s with {left} of {n} to go")
        ids = [entry_id for entry_id, _ in batch[0][1]]
        pipe = client.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xack(stream, group, entry_id)
        pipe.execute()
        left -= len(ids)
    t1 = now()
    client.close()
    return t1


def redis_streams(n: int) -> float:
    with _redis_stream() as stream:
        client = _redis()
        groups = [f"g{i}" for i in range(SUBSCRIBERS)]
        for group in groups:
            client.xgroup_create(stream, group, id="$")
        client.close()
        with _Children() as children:
            for i, group in enumerate(groups):
                children.start(f"sub{i}", _redis_group_member, stream=stream, group=group, n=n)
            children.start("publisher", _redis_stream_publisher, stream=stream, n=n)
            children.release()
            out = children.collect()
        t0: float = out.pop("publisher")
        return max(float(t1) for t1 in out.values()) - t0


# --- the cases -------------------------------------------------------------------------

REDIS_PUBSUB = f"Redis pub/sub (redis-py), PUBLISH pipelined x{BATCH}"
REDIS_STREAMS = f"Redis Streams, a consumer group per subscriber, x{BATCH}"


def ephemeral_case(n: int) -> Case:
    peers = [(REDIS_PUBSUB, redis_pubsub)] if redis_missing() is None else []
    return Case(f"fan-out to {SUBSCRIBERS} subscriber processes, ephemeral, {SIZE} B", f"event (x{SUBSCRIBERS})", n,
                (f"ringbus broker Publisher.publish_many x{BATCH}, ephemeral Subscribers", ringbus_ephemeral),
                peers, target={REDIS_PUBSUB: 2.0})


def durable_case(n: int) -> Case:
    peers = [(REDIS_STREAMS, redis_streams)] if redis_missing() is None else []
    return Case(f"fan-out to {SUBSCRIBERS} durable groups (a process each), {SIZE} B", f"event (x{SUBSCRIBERS})", n,
                (f"ringbus broker Publisher.publish_many x{BATCH}, durable Subscribers ({PREFETCH})",
                 ringbus_durable),
                peers, target={REDIS_STREAMS: 1.0})


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The pub-sub comparisons; scale < 1 shortens every case (``seed`` is unused: nothing here is random)."""

    def n(base: int) -> int:
        return max(BATCH * 2, int(base * scale) // BATCH * BATCH)

    return [ephemeral_case(n(200_000)), durable_case(n(100_000))]
