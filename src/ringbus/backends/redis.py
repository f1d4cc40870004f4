"""``redis://`` and ``rediss://``: the Bus on Redis (>= 6.2) with redis-py.

Queues are Redis Streams read through a consumer group, one stream per priority level, and every queue operation
(send, fetch, settle, stats) is one Lua script, so that a queue's counters, key locks, delayed set and streams
change together. How each feature maps to Redis is in docs/backends.md; the keys are listed in
:mod:`ringbus.backends._redis_lua`.

- **Priorities**: one stream per level (``XREADGROUP`` on the highest level first). A sorted set would give
  priorities too, but no consumer group: no pending-entries list, delivery count or idle time per delivery.
- **Visibility timeout, dead consumers**: a delivery stays in the group's pending list; a fetch or stats call
  finds those idle longer than the timeout (``XPENDING ... IDLE``) and puts them back behind what waits at their
  priority, one attempt more (the broker's order; ``XAUTOCLAIM`` would hand them to the claimer ahead of waiting
  messages of higher priority). A message's deliveries so far travel in its entry, since each entry is delivered
  once (``XREADGROUP >``).
- **Delays, nack backoff**: a sorted set by due time, moved into the streams by the fetch script.
- **Maintenance is lazy**: due delays and lapsed leases are applied when someone fetches from (or asks the stats
  of) the queue. Expiries are applied by every send, fetch or stats call under the prefix, in every queue (an
  expiry index per queue): a message expires where it waits, even behind higher priorities no fetch gets past.
- **Topics**: ephemeral subscriptions are Redis pub/sub (``PSUBSCRIBE`` on a glob that over-matches, filtered
  here with :func:`ringbus.bus.topic_matcher`); every publication is also appended to a capped stream (the
  retention, ``retention=`` messages) and enqueued, by the publish script, into each matching durable group's
  queue ``@<group>``; ``start="earliest"`` copies the retained ones in when the group is created.
- **Request-reply**: a list per service (``BRPOP`` by the servers) and a list per request for its reply.

- **Connection loss**: redis-py reconnects and retries a command that failed on a lost connection with jittered
  exponential backoff for about ``reconnect`` seconds (:class:`redis.retry.Retry`), then the call raises
  :class:`ringbus.PeerGone`. A retried send, settle or publish does not run twice: those scripts keep their result
  in a small per-bus journal (``<prefix>journal:<bus>``, the last ``JOURNAL_SLOTS`` calls) under the call's
  number, and a retry whose first try did run returns that result. A retried fetch whose reply was lost leaves its
  messages with this bus until their visibility timeout (they come back, one attempt more: at-least-once).

A RedisBus may be used from one thread at a time (like every Bus); its messages may be settled from any thread.
Not for Redis Cluster: the scripts reach keys of several queues.
"""

from __future__ import annotations

import functools
import itertools
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis as redis_py
from redis.backoff import EqualJitterBackoff
from redis.retry import Retry

from ringbus.backends import _redis_lua as lua
from ringbus.backends._common import NO_SETTLE, as_message, check_prefetch, check_subscription, reply_message
from ringbus.bus import (
    TOPIC_HEADER,
    Bus,
    Handler,
    Overflow,
    QueueOptions,
    QueueStats,
    Start,
    Subscription,
    check_name,
    check_seconds,
    check_topic,
    topic_matcher,
)
from ringbus.codec import decode, encode
from ringbus.errors import Closed, Empty, Full, NotFound, PeerGone, RingbusError
from ringbus.message import HeaderValue, Message, new_id

__all__ = ["RedisBus"]

log = logging.getLogger("ringbus.backends.redis")

DEAD_REASON = "ringbus-dead-reason"
DEAD_FROM = "ringbus-dead-from"
SUBSCRIBER_BUFFER = 10_000
POLL_MIN, POLL_MAX = 0.001, 0.02  # a waiting receive polls its queue at this backoff
SLICE = 0.1  # seconds a blocking call waits before it looks at close() and stop
SEND_CHUNK = 256
RETRY_BASE, RETRY_CAP = 0.05, 1.0  # seconds: a lost connection is retried after 0.1 s doubling to 1 s, jittered
JOURNAL_SLOTS = 1024  # calls (send, settle, publish) of one bus whose results a retry can find; > SEND_CHUNK
JOURNAL_KEEP_MS = 600_000  # a bus's journal goes this long after its last call
JOURNALED = ("send", "settle", "publish")  # the scripts a retry must not run twice
_LEN = struct.Struct(">I")
_DEADLINE = struct.Struct(">d")
_replace = msgspec.structs.replace


def _frames(message: Message) -> tuple[bytes, bytes | None]:
    frames = encode(message)
    header = bytes(frames[0])
    return header, (bytes(frames[1]) if len(frames) > 1 else None)


def _blob(message: Message) -> bytes:
    header, body = _frames(message)
    return bytes((2 if body is not None else 1,)) + _LEN.pack(len(header)) + header + (body or b"")


def _unblob(blob: bytes, copy: bool = True) -> Message:
    n = blob[0]
    (size,) = _LEN.unpack_from(blob, 1)
    header = blob[5:5 + size]
    return decode([header, blob[5 + size:]] if n == 2 else [header])


# Wraps a script so that it runs at most once per (bus, call number). Its last three ARGV are the bus's journal key,
# the call's number and the journal slot (number % JOURNAL_SLOTS); a call redis-py retries after a lost reply finds
# the result of its first try in the slot instead of running again.
_ONCE = r"""
local journal, number, slot = ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
local kept = redis.call('HGET', journal, slot)
if kept then
  local entry = cmsgpack.unpack(kept)
  if entry[1] == number then return entry[2] end
end
local result = (function()
%s
end)()
redis.call('HSET', journal, slot, cmsgpack.pack({number, result}))
redis.call('PEXPIRE', journal, %d)
return result
"""


_F = TypeVar("_F", bound=Callable[..., Any])


def _reaching_redis(method: _F) -> _F:
    """A RedisBus method whose lost connection (after every retry) raises :class:`ringbus.PeerGone`."""
    @functools.wraps(method)
    def wrapper(self: RedisBus, *args: Any, **kwargs: Any) -> Any:
        with self._reaching():
            return method(self, *args, **kwargs)
    return cast(_F, wrapper)


def _retries_for(seconds: float) -> int:
    """How many retries of EqualJitterBackoff(RETRY_CAP, RETRY_BASE) wait about ``seconds`` in all (on average)."""
    retries, waited = 0, 0.0
    while waited < seconds:
        retries += 1
        waited += 0.75 * min(RETRY_CAP, RETRY_BASE * 2 ** retries)  # equal jitter: between half and all of it
    return max(retries, 1)


def _option_fields(options: QueueOptions) -> list[str]:
    """Options as the strings stored in the queue's hash (floats through repr, so 30 and 30.0 compare equal)."""
    def seconds(value: float | None) -> str:
        return "" if value is None else repr(float(value))

    return [
        "durable", "1" if options.durable else "0",
        "max_length", "" if options.max_length is None else str(options.max_length),
        "overflow", options.overflow,
        "dead_letter", options.dead_letter or "",
        "max_attempts", str(options.max_attempts),
        "visibility_timeout", seconds(options.visibility_timeout),
        "ordered_by_key", "1" if options.ordered_by_key else "0",
        "ttl", seconds(options.ttl),
        "dedup_window", seconds(options.dedup_window),
    ]


class _Settle:
    __slots__ = ("bus", "queue", "level", "entry", "done", "consumer")

    def __init__(self, bus: RedisBus, queue: str, level: bytes, entry: bytes, consumer: _Consumer | None) -> None:
        self.bus = bus
        self.queue = queue
        self.level = level
        self.entry = entry
        self.done = False
        self.consumer = consumer

    def _settle(self, action: str, requeue: bool = True, delay: float | None = None) -> None:
        if self.done:
            raise RingbusError(f"cannot {action} delivery {self.entry.decode()} of queue {self.queue!r}: "
                               "already settled")
        bus = self.bus
        if bus._closed:
            raise Closed(f"cannot {action} a message of queue {self.queue!r}: its bus {bus.url!r} is closed "
                         "(it went back to the queue when the bus closed)")
        self.done = True
        if self.consumer is not None:
            self.consumer.outstanding -= 1
        delay_ms = 0 if delay is None else int(delay * 1000)
        result = bus._script("settle", bus._prefix, self.queue, bus._consumer, self.level, self.entry, action,
                             "1" if requeue else "0", delay_ms)
        if result == b"stale":
            raise RingbusError(f"cannot {action} delivery {self.entry.decode()} of queue {self.queue!r}: its "
                               "visibility timeout ran out and it went back to the queue (it is delivered again)")

    def ack(self, message: Message) -> None:
        self._settle("ack")

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self._settle("nack", requeue, delay)

    def reject(self, message: Message) -> None:
        self._settle("reject")


class _Consumer:
    __slots__ = ("outstanding",)

    def __init__(self) -> None:
        self.outstanding = 0


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _RedisSubscription(Subscription):
    def __init__(self, bus: RedisBus, pattern: str, group: str | None, durable: bool, start: Start) -> None:
        self.pattern = pattern
        self.group = group
        self.durable = durable
        self._bus = bus
        self._closed = False
        self._dropped = 0
        self._buffer: deque[Message] = deque()
        self._pubsub: Any = None
        if durable:
            assert group is not None
            self._queue = bus._group_queue(pattern, group, start)
            return
        self._match = topic_matcher(pattern)
        channel = bus._prefix + "t:"
        words = pattern.split(".")
        if "*" not in words and "#" not in words:
            glob, self._exact = channel + pattern, True
        else:
            literal = []
            for word in words:
                if word in ("*", "#"):
                    break
                literal.append(word)
            glob, self._exact = _glob_escape(channel + ".".join(literal)) + "*", False
        self._channel_prefix = len(channel)
        # redis-py subscribes again by itself when it reconnects (PubSub.on_connect)
        self._pubsub = bus._redis.pubsub()  # type: ignore[no-untyped-call]  # redis-py leaves pubsub() unannotated
        with bus._reaching():
            if self._exact:
                self._pubsub.subscribe(glob)
            else:
                self._pubsub.psubscribe(glob)
            # Wait for the confirmation: a publication sent after subscribe() returns must reach us.
            deadline = time.monotonic() + bus._timeout
            while True:
                reply = self._pubsub.get_message(timeout=SLICE)
                if reply is not None and reply["type"] in ("subscribe", "psubscribe"):
                    break
                if reply is not None:
                    self._take(reply)
                if time.monotonic() > deadline:
                    raise PeerGone(f"Redis at {bus.url} did not confirm the subscription within {bus._timeout:g} s")

    def _take(self, reply: dict[str, Any]) -> None:
        if reply["type"] not in ("message", "pmessage"):
            return
        topic = reply["channel"][self._channel_prefix:].decode()
        if not self._exact and not self._match(topic):
            return
        message = _unblob(reply["data"])
        if self.group is not None and not self._bus._redis.set(
                f"{self._bus._prefix}claim:{self.group}:{self.pattern}:{message.id}", 1, nx=True, px=60_000):
            return  # another member of the group has it
        if len(self._buffer) >= SUBSCRIBER_BUFFER:
            self._dropped += 1
            return
        message._settle = NO_SETTLE
        self._buffer.append(message)

    def receive(self, timeout: float | None = None) -> Message | None:
        if self._closed or self._bus._closed:
            raise Closed("subscription is closed")
        if self.durable:
            return self._bus.receive(self._queue, timeout)
        timeout = check_seconds("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
            if left <= 0.0:
                return None
            try:
                with self._bus._reaching():
                    reply = self._pubsub.get_message(timeout=left)
                    if reply is not None and not (self._closed or self._bus._closed):
                        self._take(reply)
            except (PeerGone, ValueError, AttributeError):
                if self._closed or self._bus._closed:
                    raise Closed("subscription is closed") from None
                raise
            if self._closed or self._bus._closed:
                raise Closed("subscription is closed")
        return self._buffer.popleft()

    @property
    def dropped(self) -> int:
        return self._dropped

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except redis_py.RedisError:
                pass


class RedisBus(Bus):
    """A Bus on Redis at ``redis://host:port/db?prefix=name:``; see the module docstring.

    Parameters
    ----------
    url : str
        ``redis://`` or ``rediss://`` (TLS) as redis-py reads it, plus ``prefix=`` in the query: every key this
        bus touches starts with it (default ``ringbus:``), so several buses can share one Redis database.
    timeout : float
        Seconds to wait for a connection to Redis to open.
    reconnect : float
        Seconds (about) to keep retrying a command whose connection was lost, with jittered exponential backoff,
        before it raises :class:`ringbus.PeerGone`; 0 to raise at once.
    retention : int
        Publications kept (approximately) for ``start="earliest"`` replay.
    """

    unsupported_features: frozenset[str] = frozenset()

    def __init__(self, url: str, *, timeout: float = 30.0, reconnect: float = 10.0, retention: int = 100_000,
                 prefix: str | None = None, **options: Any) -> None:
        self.url = url
        self._timeout = check_seconds("timeout", timeout, allow_zero=False) or 30.0
        self._reconnect = check_seconds("reconnect", reconnect) or 0.0
        if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
            raise ValueError(f"retention must be an int >= 1, got {retention!r}")
        self._retention = retention
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        found = [value for name, value in query if name == "prefix"]
        self._prefix = prefix if prefix is not None else (found[-1] if found else "ringbus:")
        rest = urlunsplit(parts._replace(query=urlencode([(n, v) for n, v in query if n != "prefix"])))
        options.setdefault("retry", Retry(EqualJitterBackoff(RETRY_CAP, RETRY_BASE),
                                          _retries_for(self._reconnect) if self._reconnect else 0))
        self._redis = redis_py.Redis.from_url(rest, socket_timeout=None, socket_connect_timeout=self._timeout,
                                              health_check_interval=30, **options)
        self._scripts = {name: self._redis.register_script(
            _ONCE % (getattr(lua, name.upper()), JOURNAL_KEEP_MS) if name in JOURNALED else getattr(lua, name.upper()))
            for name in ("send", "fetch", "settle", "release", "stats", "declare", "publish", "group")}
        self._consumer = new_id()
        self._journal = f"{self._prefix}journal:{self._consumer}"
        self._calls = itertools.count()  # numbers journaled calls (thread-safe: settles come from any thread)
        self._closed = False
        self._touched: set[str] = set()
        self._subscriptions: list[_RedisSubscription] = []

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"bus {self.url!r} is closed")

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        """Turns a connection that stayed lost through every retry into :class:`ringbus.PeerGone`."""
        try:
            yield
        except (redis_py.ConnectionError, redis_py.TimeoutError) as exc:
            raise PeerGone(f"Redis at {self.url} is unreachable ({exc}), still after retrying for about "
                           f"{self._reconnect:g} s; the command may or may not have taken effect") from exc

    def _args(self, name: str, args: Any) -> Any:
        """``args`` of script ``name``, with the journal's three when the script is journaled."""
        if name not in JOURNALED:
            return args
        number = next(self._calls)
        return (*args, self._journal, number, number % JOURNAL_SLOTS)

    def _script(self, name: str, *args: Any) -> Any:
        with self._reaching():
            return self._scripts[name](args=self._args(name, args))

    # -- queues -----------------------------------------------------------------------------------------------
    def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                      overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                      visibility_timeout: float = 30.0, ordered_by_key: bool = False, ttl: float | None = None,
                      dedup_window: float = 300.0) -> None:
        self._check_open()
        check_name("queue", name)
        options = QueueOptions(durable=durable, max_length=max_length, overflow=overflow, dead_letter=dead_letter,
                               max_attempts=max_attempts, visibility_timeout=visibility_timeout,
                               ordered_by_key=ordered_by_key, ttl=ttl, dedup_window=dedup_window)
        result = self._script("declare", self._prefix, name, options.dead_letter_queue(name),
                              *_option_fields(options))
        if result[0] == b"diff":
            differ = ", ".join(field.decode() for field in result[1:])
            raise ValueError(f"queue {name!r} exists with other options: {differ} differ")

    def send(self, queue: str, body: bytes | bytearray | memoryview | Message, *, key: str | None = None,
             priority: int | None = None, headers: dict[str, HeaderValue] | None = None,
             delay: float | None = None, ttl: float | None = None, dedup_id: str | None = None) -> str:
        self._check_open()
        message = as_message(body, key=key, priority=priority, headers=headers)
        delay = check_seconds("delay", delay)
        ttl = check_seconds("ttl", ttl, allow_zero=False)
        if dedup_id is not None and not isinstance(dedup_id, str):
            raise TypeError(f"dedup_id must be a str or None, not {type(dedup_id).__name__}")
        return self._sent(queue, self._script("send", *self._send_args(queue, message, delay, ttl, dedup_id)))

    def _send_args(self, queue: str, message: Message, delay: float | None, ttl: float | None,
                   dedup_id: str | None) -> list[Any]:
        header, body = _frames(message)
        return [self._prefix, queue, header, "0" if body is None else "1", body or b"", message.key or "",
                message.priority, -1 if not delay else int(delay * 1000), -1 if ttl is None else int(ttl * 1000),
                dedup_id or "", message.id]

    def _sent(self, queue: str, result: list[bytes]) -> str:
        status = result[0]
        if status == b"ok":
            return result[1].decode()
        if status == b"notfound":
            raise NotFound(f"queue {queue!r} was not declared (declare_queue first)")
        if status == b"full":
            raise Full(f"queue {queue!r} is full ({result[1].decode()} messages waiting, overflow='reject')")
        raise RingbusError(f"unexpected answer {result!r} from the send script")  # pragma: no cover

    def send_many(self, queue: str, bodies: Any) -> list[str]:
        """Send in order, pipelined (``SEND_CHUNK`` scripts per round trip). Not atomic, like the broker's."""
        self._check_open()
        messages = [as_message(body) for body in bodies]
        ids: list[str] = []
        for start in range(0, len(messages), SEND_CHUNK):
            chunk = messages[start:start + SEND_CHUNK]
            for result in self._pipelined("send", [self._send_args(queue, m, None, None, None) for m in chunk]):
                ids.append(self._sent(queue, result))
        return ids

    def _pipelined(self, name: str, calls: list[list[Any]]) -> list[Any]:
        """Run script ``name`` once per argument list in one round trip; return the results in order."""
        calls = [self._args(name, args) for args in calls]  # numbered once: a second try runs nothing twice
        script = self._scripts[name]
        for _ in range(3):
            pipe = self._redis.pipeline(transaction=False)
            for args in calls:
                script(args=args, client=pipe)
            try:
                with self._reaching():
                    return pipe.execute()
            except redis_py.exceptions.NoScriptError:
                continue  # Redis restarted between the pipeline's script check and its retry: load them again
        raise PeerGone(f"Redis at {self.url} kept forgetting the ringbus scripts (restarting?)")

    def _fetch(self, queue: str, count: int, consumer: _Consumer | None) -> list[Message]:
        result = self._script("fetch", self._prefix, queue, self._consumer, count)
        if result[0] == b"notfound":
            raise NotFound(f"queue {queue!r} was not declared (declare_queue first)")
        self._touched.add(queue)
        messages = []
        for i in range(1, len(result), 8):
            level, entry, header, nb, body, attempts, reason, source = result[i:i + 8]
            message = decode([header, body] if nb == b"1" else [header])
            message.attempts = int(attempts)
            if reason:
                message.headers[DEAD_REASON] = reason.decode()
                message.headers[DEAD_FROM] = source.decode()
            message._settle = _Settle(self, queue, level, entry, consumer)
            messages.append(message)
        return messages

    def _take(self, queue: str, count: int, timeout: float | None, consumer: _Consumer | None) -> list[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = POLL_MIN
        while True:
            if self._closed:
                raise Closed(f"bus {self.url!r} is closed")
            messages = self._fetch(queue, count, consumer)
            if messages:
                return messages
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0.0:
                return []
            time.sleep(pause if left is None else min(pause, left))
            pause = min(pause * 2, POLL_MAX)

    def receive(self, queue: str, timeout: float | None = None) -> Message | None:
        self._check_open()
        timeout = check_seconds("timeout", timeout)
        messages = self._take(queue, 1, timeout, None)
        return messages[0] if messages else None

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> Generator[Message, None, None]:
        self._check_open()
        check_prefetch(prefetch)
        timeout = check_seconds("timeout", timeout)
        self.queue_stats(queue)  # an unknown queue fails here, not at the first next()
        return self._consume(queue, prefetch, timeout)

    def _consume(self, queue: str, prefetch: int, timeout: float | None) -> Generator[Message, None, None]:
        consumer = _Consumer()
        buffer: deque[Message] = deque()
        counters = f"{self._prefix}q:{{{queue}}}:st"
        with self._reaching():
            self._redis.hincrby(counters, "consumers", 1)
        try:
            while not self._closed:
                if buffer:
                    consumer.outstanding += 1
                    yield buffer.popleft()
                    continue
                credit = prefetch - consumer.outstanding
                if credit <= 0:
                    # Every prefetched message is with the application: wait for a settle (from any thread).
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while consumer.outstanding >= prefetch and not self._closed:
                        if deadline is not None and time.monotonic() >= deadline:
                            return
                        time.sleep(POLL_MAX)
                    continue
                messages = self._take(queue, credit, timeout, consumer)
                if not messages:
                    return
                buffer.extend(messages)
        except Closed:
            return
        finally:
            if not self._closed:
                try:
                    for message in buffer:  # fetched, never handed out: back without counting an attempt
                        handle = message._settle
                        self._script("settle", self._prefix, queue, self._consumer, handle.level, handle.entry,
                                     "unfetch", "1", 0)
                    with self._reaching():
                        self._redis.hincrby(counters, "consumers", -1)
                except PeerGone as exc:  # the loop ends anyway; what it held comes back after its lease
                    log.warning("consume(%r) could not give back its prefetched messages: %s", queue, exc)

    def queue_stats(self, queue: str) -> QueueStats:
        self._check_open()
        result = self._script("stats", self._prefix, queue)
        if result[0] == b"notfound":
            raise NotFound(f"queue {queue!r} was not declared (declare_queue first)")
        (ready, blocked, inflight, consumers, sent, acked, redelivered, dead_lettered, expired, deduplicated,
         delayed, sends, acks) = (int(v) for v in result[1:])
        return QueueStats(name=queue, depth=ready + blocked + delayed, ready=ready + blocked, delayed=delayed,
                          in_flight=inflight, consumers=max(0, consumers), sent=sent, acked=acked,
                          redelivered=redelivered, dead_lettered=dead_lettered, expired=expired,
                          deduplicated=deduplicated, send_rate=sends / 5.0, ack_rate=acks / 5.0)

    def queues(self) -> list[str]:
        self._check_open()
        with self._reaching():
            members = cast("set[bytes]", self._redis.smembers(self._prefix + "queues"))
        names = (name.decode() for name in members)
        return sorted(name for name in names if not name.startswith("@"))

    # -- topics -----------------------------------------------------------------------------------------------
    def _publish_args(self, topic: str, message: Message) -> list[Any]:
        message = _replace(message, headers={**message.headers, TOPIC_HEADER: topic})
        header, body = _frames(message)
        return [self._prefix, topic, header, "0" if body is None else "1", body or b"", message.key or "",
                self._retention]

    def publish(self, topic: str, body: bytes | bytearray | memoryview | Message, *,
                headers: dict[str, HeaderValue] | None = None, key: str | None = None) -> str:
        self._check_open()
        check_topic(topic)
        message = as_message(body, key=key, headers=headers)
        self._script("publish", *self._publish_args(topic, message))
        return message.id

    def publish_many(self, topic: str, bodies: Any) -> list[str]:
        self._check_open()
        check_topic(topic)
        messages = [as_message(body) for body in bodies]
        for start in range(0, len(messages), SEND_CHUNK):  # chunks: a journal holds JOURNAL_SLOTS calls
            self._pipelined("publish", [self._publish_args(topic, m) for m in messages[start:start + SEND_CHUNK]])
        return [message.id for message in messages]

    def _group_queue(self, pattern: str, group: str, start: Start) -> str:
        queue = f"@{group}"
        options = QueueOptions()
        result = self._script("group", self._prefix, group, pattern, start, options.dead_letter_queue(queue),
                              *_option_fields(options))
        if result[0] == b"pattern":
            raise ValueError(f"durable group {group!r} is bound to pattern {result[1].decode()!r}, not {pattern!r}")
        return queue

    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscription:
        self._check_open()
        check_subscription(pattern, group, durable, start)
        subscription = _RedisSubscription(self, pattern, group, durable, start)
        self._subscriptions.append(subscription)
        return subscription

    # -- services ---------------------------------------------------------------------------------------------
    @_reaching_redis
    def request(self, service: str, body: bytes | bytearray | memoryview | Message, *,
                timeout: float | None = 5.0) -> Message:
        self._check_open()
        check_name("service", service)
        timeout = check_seconds("timeout", timeout)
        message = as_message(body)
        reply_key = f"{self._prefix}reply:{message.id}"
        deadline = time.time() + (timeout if timeout is not None else 365 * 86400.0)
        reply_bytes = reply_key.encode()
        payload = _DEADLINE.pack(deadline) + _LEN.pack(len(reply_bytes)) + reply_bytes + _blob(message)
        self._redis.lpush(f"{self._prefix}svc:{service}", payload)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            self._check_open()
            left = 1.0 if end is None else min(1.0, end - time.monotonic())
            if left <= 0.0:
                break
            got = self._redis.blpop([reply_key], timeout=max(left, 0.01))
            if got is not None:
                self._redis.delete(reply_key)
                data = cast(bytes, got[1])
                if data[:1] == b"E":
                    raise RingbusError(f"service {service!r} failed: {data[1:].decode(errors='replace')}")
                return _unblob(data[1:])
        raise Empty(f"no reply from service {service!r} within {timeout} s")

    @_reaching_redis
    def serve(self, service: str, handler: Handler, *, stop: threading.Event | None = None) -> None:
        self._check_open()
        check_name("service", service)
        key = f"{self._prefix}svc:{service}"
        while not self._closed and not (stop is not None and stop.is_set()):
            got = self._redis.brpop([key], timeout=SLICE)
            if got is None:
                continue
            data = cast(bytes, got[1])
            (deadline,) = _DEADLINE.unpack_from(data, 0)
            (size,) = _LEN.unpack_from(data, 8)
            reply_key = data[12:12 + size]
            if time.time() > deadline:
                continue  # its caller gave up
            request = _unblob(data[12 + size:])
            try:
                reply = b"M" + _blob(reply_message(request, handler(request)))
            except Exception as exc:  # the caller gets the error; this server keeps serving
                log.exception("handler of service %r failed", service)
                reply = b"E" + f"{type(exc).__name__}: {exc}".encode()
            pipe = self._redis.pipeline(transaction=True)
            pipe.rpush(reply_key, reply)
            pipe.pexpire(reply_key, max(1000, int((deadline - time.time()) * 1000) + 1000))
            pipe.execute()

    # -- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()
        try:
            for queue in self._touched:  # unsettled messages go back at once, each counted as an attempt
                self._scripts["release"](args=[self._prefix, queue, self._consumer])
            self._redis.delete(self._journal)
        except redis_py.RedisError as exc:
            log.warning("could not give back the unsettled messages of %s (they come back after their "
                        "visibility timeout): %s", self.url, exc)
        self._redis.close()

    @property
    def closed(self) -> bool:
        return self._closed
