"""``memory://``: the Bus in one process. Threads that connect to the same name share its queues.

The semantics are the broker's (the same :class:`QueueBook` and
:class:`TopicBook`), minus durability: nothing survives the process. One lock
per namespace serialises the books; consumers wait on a condition per queue
(the wait releases the GIL), so a memory bus is safe across threads - but,
like every Bus, one Bus object belongs to one thread at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Generator
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ringbus._core import Ring
from ringbus.backends._common import (
    NO_SETTLE,
    ServiceError,
    as_message,
    check_prefetch,
    check_subscription,
    reply_message,
)
from ringbus.broker.queues import QueueBook
from ringbus.broker.topics import TopicBook
from ringbus.bus import (
    Bus,
    Handler,
    Overflow,
    QueueOptions,
    QueueStats,
    Start,
    Subscription,
    check_name,
    check_seconds,
)
from ringbus.errors import Closed, Empty, Full, RingbusError
from ringbus.message import HeaderValue, Message

__all__ = ["MemoryBus"]

log = logging.getLogger("ringbus.backends.memory")

_replace = msgspec.structs.replace

SUBSCRIBER_BUFFER = 10_000  # messages an ephemeral subscriber may lag before it drops
SERVICE_BACKLOG = 10_000  # requests waiting for a server of one service
FETCH_BATCH = 64  # deliveries a consume loop takes per lock


class _Namespace:
    """The queues, topics and services behind one ``memory://name``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conditions: dict[str, threading.Condition] = {}
        self.queues = QueueBook(on_ready=self._wake)
        self.topics = TopicBook(self.queues)
        self.services: dict[str, Ring[_Call]] = {}

    def condition(self, queue: str) -> threading.Condition:
        cond = self.conditions.get(queue)
        if cond is None:
            cond = self.conditions[queue] = threading.Condition(self.lock)
        return cond

    def _wake(self, queue: Any) -> None:
        cond = self.conditions.get(queue.name)
        if cond is not None:
            cond.notify()

    def service(self, name: str) -> Ring[_Call]:
        ring = self.services.get(name)
        if ring is None:
            ring = self.services[name] = Ring(SERVICE_BACKLOG)
        return ring


_namespaces: dict[str, _Namespace] = {}
_namespaces_lock = threading.Lock()


def _namespace(url: str) -> _Namespace:
    parts = urlsplit(url)
    name = parts.netloc + parts.path
    with _namespaces_lock:
        space = _namespaces.get(name)
        if space is None:
            space = _namespaces[name] = _Namespace()
        return space


class _Settle:
    """The settle handle of one delivery: knows its queue and tag, refuses a second settle."""

    __slots__ = ("bus", "queue", "tag", "done", "consumer")

    def __init__(self, bus: MemoryBus, queue: str, tag: int, consumer: _Consumer | None) -> None:
        self.bus = bus
        self.queue = queue
        self.tag = tag
        self.done = False
        self.consumer = consumer

    def _settle(self, action: str, *args: Any) -> None:
        if self.done:
            raise RingbusError(f"cannot {action} delivery {self.tag} of queue {self.queue!r}: already settled")
        self.bus._settle(self, action, *args)

    def ack(self, message: Message) -> None:
        self._settle("ack")

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self._settle("nack", requeue, delay)

    def reject(self, message: Message) -> None:
        self._settle("reject")


class _Consumer:
    """Credit of one consume iterator: deliveries not yet settled, and whether it waits for one."""

    __slots__ = ("outstanding", "waiting")

    def __init__(self) -> None:
        self.outstanding = 0
        self.waiting = False


class _EphemeralSubscriber:
    __slots__ = ("ring", "dropped")

    def __init__(self) -> None:
        self.ring: Ring[Message] = Ring(SUBSCRIBER_BUFFER)
        self.dropped = 0

    def deliver(self, message: Message) -> bool:
        try:
            self.ring.put_nowait(message)
        except (Full, Closed):
            self.dropped += 1
            return False
        return True


class _MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, pattern: str, group: str | None, durable: bool, start: Start) -> None:
        self.pattern = pattern
        self.group = group
        self.durable = durable
        self._bus = bus
        self._closed = False
        space = bus._space
        if durable:
            assert group is not None
            with space.lock:
                self._queue, _ = space.topics.durable_group(pattern, group, start)
            self._subscriber = None
        else:
            self._subscriber = _EphemeralSubscriber()
            with space.lock:
                self._token = space.topics.add(pattern, group, self._subscriber)

    def receive(self, timeout: float | None = None) -> Message | None:
        if self._closed:
            raise Closed("subscription is closed")
        if self._subscriber is None:
            return self._bus.receive(self._queue, timeout)
        try:
            message = self._subscriber.ring.get(timeout=timeout)
        except Empty:
            return None
        message = _replace(message)  # one publication reaches many subscribers: each gets its own object
        message._settle = NO_SETTLE
        return message

    @property
    def dropped(self) -> int:
        return 0 if self._subscriber is None else self._subscriber.dropped

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._subscriber is not None:
            with self._bus._space.lock:
                self._bus._space.topics.remove(self._token)
            self._subscriber.ring.close()


class _Call:
    """One request waiting for its reply."""

    __slots__ = ("request", "reply", "cancelled")

    def __init__(self, request: Message) -> None:
        self.request = request
        self.reply: Ring[Message | ServiceError] = Ring(1)
        self.cancelled = False


class MemoryBus(Bus):
    """A Bus on the queues of this process; see the module docstring."""

    unsupported_features: frozenset[str] = frozenset()

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._space = _namespace(url)
        self._closed = False
        self._subscriptions: list[_MemorySubscription] = []

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"bus {self.url!r} is closed")

    # -- queues -------------------------------------------------------------------------------------------------
    def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                      overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                      visibility_timeout: float = 30.0, ordered_by_key: bool = False, ttl: float | None = None,
                      dedup_window: float = 300.0) -> None:
        self._check_open()
        check_name("queue", name)
        options = QueueOptions(durable=durable, max_length=max_length, overflow=overflow, dead_letter=dead_letter,
                               max_attempts=max_attempts, visibility_timeout=visibility_timeout,
                               ordered_by_key=ordered_by_key, ttl=ttl, dedup_window=dedup_window)
        with self._space.lock:
            self._space.queues.declare(name, options)

    def send(self, queue: str, body: bytes | bytearray | memoryview | Message, *, key: str | None = None,
             priority: int | None = None, headers: dict[str, HeaderValue] | None = None,
             delay: float | None = None, ttl: float | None = None, dedup_id: str | None = None) -> str:
        self._check_open()
        message = as_message(body, key=key, priority=priority, headers=headers)
        delay = check_seconds("delay", delay)
        ttl = check_seconds("ttl", ttl, allow_zero=False)
        if dedup_id is not None and not isinstance(dedup_id, str):
            raise TypeError(f"dedup_id must be a str or None, not {type(dedup_id).__name__}")
        with self._space.lock:
            return self._space.queues.send(queue, message, delay=delay, ttl=ttl, dedup_id=dedup_id)

    def send_many(self, queue: str, bodies: Any) -> list[str]:
        self._check_open()
        messages = [as_message(body) for body in bodies]
        with self._space.lock:
            book = self._space.queues
            return [book.send(queue, message) for message in messages]

    def _take(self, queue: str, max_items: int, timeout: float | None,
              consumer: _Consumer | None) -> list[Message]:
        """Wait up to ``timeout`` for deliveries from ``queue``: up to ``max_items``, or [] if none came."""
        timeout = check_seconds("timeout", timeout)
        space = self._space
        deadline = None if timeout is None else time.monotonic() + timeout
        with space.lock:
            book = space.queues
            book.get(queue)
            cond = space.condition(queue)
            while True:
                if self._closed:
                    raise Closed(f"bus {self.url!r} is closed")
                delivered = book.fetch(queue, self, max_items)
                if delivered:
                    messages = []
                    for tag, message, _ in delivered:
                        # A copy: the queue keeps its own, and a publication is the same object in every
                        # group's queue - a settle handle on it would be shared.
                        message = _replace(message)
                        message._settle = _Settle(self, queue, tag, consumer)
                        messages.append(message)
                    return messages
                wait = book.tick()
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0.0:
                        return []
                    wait = left if wait is None else min(wait, left)
                cond.wait(wait)

    def receive(self, queue: str, timeout: float | None = None) -> Message | None:
        self._check_open()
        messages = self._take(queue, 1, timeout, None)
        return messages[0] if messages else None

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> Generator[Message, None, None]:
        self._check_open()
        check_prefetch(prefetch)
        timeout = check_seconds("timeout", timeout)
        with self._space.lock:
            self._space.queues.get(queue)
        return self._consume(queue, prefetch, timeout)

    def _consume(self, queue: str, prefetch: int, timeout: float | None) -> Generator[Message, None, None]:
        consumer = _Consumer()
        space = self._space
        with space.lock:
            space.queues.get(queue).consumers += 1
        buffer: deque[Message] = deque()
        try:
            while not self._closed:
                if buffer:
                    yield buffer.popleft()
                    continue
                if consumer.outstanding >= prefetch and not self._wait_credit(queue, consumer, prefetch, timeout):
                    return
                # A batch per lock: what is taken counts against prefetch at once, seen by the loop or not.
                messages = self._take(queue, min(prefetch - consumer.outstanding, FETCH_BATCH), timeout, consumer)
                if not messages:
                    return
                consumer.outstanding += len(messages)
                buffer.extend(messages)
        except Closed:
            return
        finally:
            with space.lock:
                book = space.queues
                for message in buffer:  # taken, never handed out: back without counting an attempt
                    try:
                        book.unfetch(queue, message._settle.tag)
                    except RingbusError:  # its lease ran out, or the bus closed: it is back already
                        pass
                found = book.queues.get(queue)
                if found is not None:
                    found.consumers -= 1

    def _wait_credit(self, queue: str, consumer: _Consumer, prefetch: int, timeout: float | None) -> bool:
        """Wait until a delivery of this consumer is settled (from any thread); False on timeout or close."""
        space = self._space
        deadline = None if timeout is None else time.monotonic() + timeout
        with space.lock:
            cond = space.condition(queue)
            consumer.waiting = True
            try:
                while consumer.outstanding >= prefetch:
                    if self._closed:
                        return False
                    wait = None if deadline is None else deadline - time.monotonic()
                    if wait is not None and wait <= 0.0:
                        return False
                    cond.wait(wait)
            finally:
                consumer.waiting = False
        return True

    def _settle(self, handle: _Settle, action: str, *args: Any) -> None:
        if self._closed:
            raise Closed(f"cannot {action} a message of queue {handle.queue!r}: its bus {self.url!r} is closed "
                         "(it went back to the queue when the bus closed)")
        space = self._space
        with space.lock:
            book = space.queues
            if action == "ack":
                book.ack(handle.queue, handle.tag)
            elif action == "nack":
                book.nack(handle.queue, handle.tag, requeue=args[0], delay=args[1])
            else:
                book.reject(handle.queue, handle.tag)
            handle.done = True
            consumer = handle.consumer
            if consumer is not None:
                consumer.outstanding -= 1
                if consumer.waiting:
                    space.condition(handle.queue).notify_all()

    def queue_stats(self, queue: str) -> QueueStats:
        self._check_open()
        with self._space.lock:
            return self._space.queues.stats(queue)

    def queues(self) -> list[str]:
        self._check_open()
        with self._space.lock:
            return [name for name in self._space.queues.names() if not name.startswith("@")]

    # -- topics -------------------------------------------------------------------------------------------------
    def publish(self, topic: str, body: bytes | bytearray | memoryview | Message, *,
                headers: dict[str, HeaderValue] | None = None, key: str | None = None) -> str:
        self._check_open()
        message = as_message(body, key=key, headers=headers)
        with self._space.lock:
            return self._space.topics.publish(topic, message)

    def publish_many(self, topic: str, bodies: Any) -> list[str]:
        self._check_open()
        messages = [as_message(body) for body in bodies]
        with self._space.lock:
            publish = self._space.topics.publish
            return [publish(topic, message) for message in messages]

    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscription:
        self._check_open()
        check_subscription(pattern, group, durable, start)
        subscription = _MemorySubscription(self, pattern, group, durable, start)
        self._subscriptions.append(subscription)
        return subscription

    # -- services -----------------------------------------------------------------------------------------------
    def request(self, service: str, body: bytes | bytearray | memoryview | Message, *,
                timeout: float | None = 5.0) -> Message:
        self._check_open()
        check_name("service", service)
        timeout = check_seconds("timeout", timeout)
        call = _Call(as_message(body))
        with self._space.lock:
            ring = self._space.service(service)
        try:
            ring.put(call, timeout=timeout)
        except Full:
            raise Empty(f"service {service!r} has {SERVICE_BACKLOG} requests waiting; "
                        f"none taken within {timeout} s") from None
        try:
            reply = call.reply.get(timeout=timeout)
        except Empty:
            call.cancelled = True
            raise Empty(f"no reply from service {service!r} within {timeout} s") from None
        if isinstance(reply, ServiceError):
            raise RingbusError(f"service {service!r} failed: {reply.text}")
        return reply

    def serve(self, service: str, handler: Handler, *, stop: threading.Event | None = None) -> None:
        self._check_open()
        check_name("service", service)
        with self._space.lock:
            ring = self._space.service(service)
        while not self._closed and not (stop is not None and stop.is_set()):
            try:
                call = ring.get(timeout=0.05)  # short slices: notice stop and close promptly
            except Empty:
                continue
            if call.cancelled:
                continue
            try:
                reply: Message | ServiceError = reply_message(call.request, handler(call.request))
            except Exception as exc:  # the caller gets the error; this server keeps serving
                log.exception("handler of service %r failed", service)
                reply = ServiceError(f"{type(exc).__name__}: {exc}")
            try:
                call.reply.put_nowait(reply)
            except Full:  # pragma: no cover - one reply per call
                pass

    # -- lifetime -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()
        space = self._space
        with space.lock:
            space.queues.release(self)
            for cond in space.conditions.values():
                cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
