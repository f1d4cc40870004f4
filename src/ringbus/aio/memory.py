"""``memory://`` for asyncio: the in-process books of :class:`ringbus.backends.memory.MemoryBus`, never blocking.

Every call is the sync MemoryBus's non-waiting form (a lock held for microseconds); a wait is that call tried
again after a short, growing sleep (:func:`ringbus.aio._wait.poll`). Sends, publishes, settles and replies
made through any AsyncMemoryBus of the namespace ring its doorbell, so asyncio waiters in this process wake at
once; what threads do through a sync MemoryBus is seen within ``POLL_MAX`` seconds. Nothing is held across
an ``await``, so a cancelled receive or consume iteration has taken nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Iterable
from typing import Any

from ringbus.aio._base import (
    AsyncBus,
    AsyncHandler,
    AsyncMessage,
    AsyncSubscription,
    Body,
    Credit,
    call_handler,
    check_handler,
    idle_left,
    unwrap,
)
from ringbus.aio._wait import Doorbell, poll
from ringbus.backends._common import ServiceError, as_message, reply_message
from ringbus.backends.memory import SERVICE_BACKLOG, MemoryBus, _Call
from ringbus.bus import Overflow, QueueStats, Start, Subscription, check_name, check_seconds
from ringbus.errors import Closed, Empty, Full, RingbusError
from ringbus.message import HeaderValue, Message, SettleHandle

__all__ = ["AsyncMemoryBus"]

log = logging.getLogger("ringbus.aio.memory")

SERVE_SLICE = 0.05  # seconds a serve loop waits for a request before it looks at stop and close again

# One doorbell per namespace: whatever an asyncio bus changes there may be what another one waits for.
_doorbells: weakref.WeakKeyDictionary[Any, Doorbell] = weakref.WeakKeyDictionary()


class _Handle:
    """A delivery's settle handle: settles through the MemoryBus, rings the doorbell (a nack requeues, a reject
    fills a dead-letter queue), and gives a consume iterator its credit back."""

    __slots__ = ("inner", "doorbell", "credit")

    def __init__(self, inner: SettleHandle, doorbell: Doorbell, credit: Credit | None) -> None:
        self.inner = inner
        self.doorbell = doorbell
        self.credit = credit

    def _done(self) -> None:
        self.doorbell.ring()
        if self.credit is not None:
            self.credit.settled()

    def ack(self, message: Message) -> None:
        self.inner.ack(message)
        self._done()  # an ack may free the next message of an ordered key

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self.inner.nack(message, requeue, delay)
        self._done()

    def reject(self, message: Message) -> None:
        self.inner.reject(message)
        self._done()


class _AsyncMemorySubscription(AsyncSubscription):
    def __init__(self, bus: AsyncMemoryBus, subscription: Subscription) -> None:
        self.pattern = subscription.pattern
        self.group = subscription.group
        self.durable = subscription.durable
        self._bus = bus
        self._subscription = subscription

    def _take(self) -> Message:
        message = self._subscription.receive(timeout=0)
        if message is None:
            raise Empty
        return message

    async def receive(self, timeout: float | None = None) -> AsyncMessage | None:
        try:
            message = await poll(self._take, check_seconds("timeout", timeout), self._bus._doorbell)
        except Empty:
            return None
        return self._bus._deliver(message, None)

    @property
    def dropped(self) -> int:
        return self._subscription.dropped

    async def close(self) -> None:
        self._subscription.close()


class AsyncMemoryBus(AsyncBus):
    """An :class:`AsyncBus` on the queues of this process; shares them with sync ``memory://`` buses of the same
    name. See the module docstring."""

    unsupported_features: frozenset[str] = MemoryBus.unsupported_features

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._bus = MemoryBus(url)
        space = self._bus._space
        doorbell = _doorbells.get(space)
        if doorbell is None:
            doorbell = _doorbells[space] = Doorbell()
        self._doorbell = doorbell

    def _deliver(self, message: Message, credit: Credit | None) -> AsyncMessage:
        message._settle = _Handle(message._settle, self._doorbell, credit)
        return AsyncMessage(message)

    # -- queues -------------------------------------------------------------------------------------------------
    async def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                            overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                            visibility_timeout: float = 30.0, ordered_by_key: bool = False,
                            ttl: float | None = None, dedup_window: float = 300.0) -> None:
        self._bus.declare_queue(name, durable=durable, max_length=max_length, overflow=overflow,
                                dead_letter=dead_letter, max_attempts=max_attempts,
                                visibility_timeout=visibility_timeout, ordered_by_key=ordered_by_key, ttl=ttl,
                                dedup_window=dedup_window)

    async def send(self, queue: str, body: Body, *, key: str | None = None, priority: int | None = None,
                   headers: dict[str, HeaderValue] | None = None, delay: float | None = None,
                   ttl: float | None = None, dedup_id: str | None = None) -> str:
        message_id = self._bus.send(queue, unwrap(body), key=key, priority=priority,  # type: ignore[arg-type]
                                    headers=headers, delay=delay, ttl=ttl, dedup_id=dedup_id)
        self._doorbell.ring()
        return message_id

    async def send_many(self, queue: str, bodies: Iterable[Body]) -> list[str]:
        ids = self._bus.send_many(queue, [unwrap(body) for body in bodies])
        self._doorbell.ring()
        return ids

    def _take(self, queue: str) -> Message:
        message = self._bus.receive(queue, timeout=0)
        if message is None:
            raise Empty
        return message

    async def receive(self, queue: str, timeout: float | None = None) -> AsyncMessage | None:
        try:
            message = await poll(lambda: self._take(queue), check_seconds("timeout", timeout), self._doorbell)
        except Empty:
            return None
        return self._deliver(message, None)

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> AsyncGenerator[AsyncMessage, None]:
        self._check_open()
        self._bus.queue_stats(queue)  # an unknown queue fails here, as with the sync bus
        return super().consume(queue, prefetch=prefetch, timeout=timeout)

    async def _consume(self, queue: str, prefetch: int,
                       timeout: float | None) -> AsyncGenerator[AsyncMessage, None]:
        # One message is taken right before it is handed out: nothing is ever buffered, so there is nothing to
        # give back when the iterator is cancelled or closed.
        credit = Credit(asyncio.get_running_loop())
        idle_since = time.monotonic()
        while not self.closed:
            left = idle_left(timeout, idle_since, time.monotonic())
            if left is not None and left <= 0.0:
                return
            if credit.outstanding >= prefetch:  # every delivery is with the application: wait for a settle
                await credit.wait(1.0 if left is None else min(1.0, left))
                continue
            try:
                message = await poll(lambda: self._take(queue), left, self._doorbell)
            except (Empty, Closed):
                return
            credit.outstanding += 1
            yield self._deliver(message, credit)
            idle_since = time.monotonic()

    async def queue_stats(self, queue: str) -> QueueStats:
        return self._bus.queue_stats(queue)

    async def queues(self) -> list[str]:
        return self._bus.queues()

    # -- topics -------------------------------------------------------------------------------------------------
    async def publish(self, topic: str, body: Body, *, headers: dict[str, HeaderValue] | None = None,
                      key: str | None = None) -> str:
        message_id = self._bus.publish(topic, unwrap(body), headers=headers, key=key)  # type: ignore[arg-type]
        self._doorbell.ring()
        return message_id

    async def publish_many(self, topic: str, bodies: Iterable[Body]) -> list[str]:
        ids = self._bus.publish_many(topic, [unwrap(body) for body in bodies])
        self._doorbell.ring()
        return ids

    async def _subscribe(self, pattern: str, group: str | None, durable: bool, start: Start) -> AsyncSubscription:
        return _AsyncMemorySubscription(self, self._bus.subscribe(pattern, group=group, durable=durable, start=start))

    # -- services -----------------------------------------------------------------------------------------------
    def _service(self, name: str) -> Any:
        space = self._bus._space
        with space.lock:
            return space.service(name)

    async def request(self, service: str, body: Body, *, timeout: float | None = 5.0) -> Message:
        self._check_open()
        check_name("service", service)
        timeout = check_seconds("timeout", timeout)
        call = _Call(as_message(unwrap(body)))
        ring = self._service(service)
        try:
            await poll(lambda: ring.put_nowait(call), timeout, self._doorbell, Full)
        except Full:
            raise Empty(f"service {service!r} has {SERVICE_BACKLOG} requests waiting; none taken within "
                        f"{timeout} s") from None
        self._doorbell.ring()
        try:
            reply = await poll(call.reply.get_nowait, timeout, self._doorbell)
        except Empty:
            call.cancelled = True
            raise Empty(f"no reply from service {service!r} within {timeout} s") from None
        except asyncio.CancelledError:
            call.cancelled = True  # a server that has not taken it yet skips it
            raise
        if isinstance(reply, ServiceError):
            raise RingbusError(f"service {service!r} failed: {reply.text}")
        return reply

    async def serve(self, service: str, handler: AsyncHandler, *, stop: asyncio.Event | None = None) -> None:
        self._check_open()
        check_name("service", service)
        check_handler(handler)
        ring = self._service(service)
        while not self.closed and not (stop is not None and stop.is_set()):
            try:
                call = await poll(ring.get_nowait, SERVE_SLICE, self._doorbell)
            except (Empty, Closed):
                continue
            if call.cancelled:
                continue
            try:
                reply: Message | ServiceError = reply_message(call.request, await call_handler(handler, call.request))
            except Exception as exc:  # the caller gets the error; this server keeps serving
                log.exception("handler of service %r failed", service)
                reply = ServiceError(f"{type(exc).__name__}: {exc}")
            try:
                call.reply.put_nowait(reply)
            except Full:  # pragma: no cover - one reply per call
                pass
            self._doorbell.ring()

    # -- lifetime -----------------------------------------------------------------------------------------------
    async def close(self) -> None:
        self._bus.close()
        self._doorbell.ring()  # waiters look again, and see Closed

    @property
    def closed(self) -> bool:
        return self._bus.closed
