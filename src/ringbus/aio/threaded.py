"""The asyncio adapter for backends without a native asyncio client (redis://, amqp://, and any later one).

An adapter, not a native client: the backend's sync :class:`ringbus.Bus` lives on one worker thread of its
own per :class:`ThreadedBus`, and every call is a job handed to that thread; the event loop only waits for
the job's result. Calls of one ThreadedBus therefore run one at a time, in order. Waits are cut into slices
of ``SLICE`` seconds (a receive is many short receives), so a consume loop never holds the thread for long
and a send or an ack from another task goes through between two slices. Exceptions: ``request`` holds the
thread until its reply or timeout, and each ``serve`` opens a sync connection of its own, on a thread of
its own, whose handler runs on the event loop.

Cancellation: a cancelled receive or consume iteration whose job had already taken a message gives it back
with ``nack(requeue=True)``: it is delivered again at once, with ``attempts`` one higher (as after a
consumer that died).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue as queue_module
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any, TypeVar

from ringbus.aio._base import (
    AsyncBus,
    AsyncHandler,
    AsyncMessage,
    AsyncSubscription,
    Body,
    Credit,
    CreditHandle,
    call_handler,
    check_handler,
    claim,
    idle_left,
    unwrap,
)
from ringbus.bus import Bus, Overflow, QueueStats, Start, Subscription, check_name, check_seconds, connect
from ringbus.errors import Closed
from ringbus.message import HeaderValue, Message

__all__ = ["ThreadedBus", "SLICE"]

log = logging.getLogger("ringbus.aio.threaded")

T = TypeVar("T")

SLICE = 0.05  # seconds one receive job may wait before the worker takes the next job


class _Job:
    __slots__ = ("fn", "loop", "future", "give_back")

    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop | None,
                 future: asyncio.Future[Any] | None, give_back: Callable[[Any], None] | None) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future
        self.give_back = give_back

    def run(self) -> None:
        try:
            result, error = self.fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, exc
        if self.loop is None or self.future is None:
            if error is not None and not isinstance(error, Closed):
                log.warning("a background job of an asyncio adapter failed: %r", error)
            return
        try:
            self.loop.call_soon_threadsafe(self._resolve, result, error)
        except RuntimeError:  # the loop is closed: nobody will take the result
            if result is not None and self.give_back is not None:
                self.give_back(result)

    def _resolve(self, result: Any, error: BaseException | None) -> None:
        future = self.future
        assert future is not None
        if future.cancelled():  # the task gave up while the job ran: what it took goes back
            if error is None and result is not None and self.give_back is not None:
                self.give_back(result)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class _ThreadedSubscription(AsyncSubscription):
    def __init__(self, bus: ThreadedBus, subscription: Subscription) -> None:
        self.pattern = subscription.pattern
        self.group = subscription.group
        self.durable = subscription.durable
        self._bus = bus
        self._subscription = subscription
        self._closed = False
        # An ephemeral message that came for a cancelled receive waits here for the next one (it cannot go back).
        self._stash: list[Message] = []

    def _keep(self, message: Message) -> None:
        if self.durable:
            self._bus._give_back(message)
        else:
            self._stash.append(message)

    async def receive(self, timeout: float | None = None) -> AsyncMessage | None:
        if self._closed:
            raise Closed("subscription is closed")
        if self._stash:
            return self._bus._wrap(self._stash.pop(0), None)
        subscription = self._subscription
        message = await self._bus._sliced(lambda wait: subscription.receive(wait), check_seconds("timeout", timeout),
                                          self._keep)
        return None if message is None else self._bus._wrap(message, None)

    @property
    def dropped(self) -> int:
        # A counter the sync subscription keeps (its backends update it as messages come); read from here.
        return self._subscription.dropped

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._bus.closed:
            await self._bus._call(self._subscription.close)


class ThreadedBus(AsyncBus):
    """An :class:`AsyncBus` over any sync Bus, run on a dedicated worker thread; see the module docstring.

    Parameters
    ----------
    url : str
        Any url :func:`ringbus.connect` takes.
    **options
        Passed to :func:`ringbus.connect` (on the worker thread).
    """

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._options = options
        self._closed = False
        self._bus: Bus | None = None
        self._connect_error: BaseException | None = None
        self._serving: set[threading.Event] = set()
        self._jobs: queue_module.SimpleQueue[_Job | None] = queue_module.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"ringbus-aio-{url.split('://')[0]}", daemon=True)
        self._thread.start()
        self._jobs.put(_Job(self._connect, None, None, None))

    # -- the worker thread --------------------------------------------------------------------------------------
    def _connect(self) -> None:
        try:
            self._bus = connect(self.url, **self._options)
        except BaseException as exc:  # noqa: BLE001 - raised by every call, starting with open()
            self._connect_error = exc
        else:
            self.unsupported_features = frozenset(getattr(self._bus, "unsupported_features", frozenset()))

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            job.run()

    def _sync(self) -> Bus:
        """The sync bus (worker thread only); the connection's error if it could not be made."""
        if self._bus is None:
            assert self._connect_error is not None
            raise self._connect_error
        return self._bus

    async def _call(self, fn: Callable[[], T], give_back: Callable[[Any], None] | None = None) -> T:
        """Run ``fn`` on the worker thread and return its result; a result that comes after the task was
        cancelled is handed to ``give_back``."""
        if self._closed:
            raise Closed(f"bus {self.url!r} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, loop, future, give_back))
        if give_back is None:
            return await future
        return await claim(future, give_back)

    def _background(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the worker thread; nobody waits for it."""
        self._jobs.put(_Job(fn, None, None, None))

    def _give_back(self, message: Message) -> None:
        self._background(lambda: message.nack(requeue=True))

    async def _sliced(self, receive: Callable[[float], T | None], timeout: float | None,
                      give_back: Callable[[Any], None]) -> T | None:
        """``receive(wait)`` in slices of at most SLICE seconds until it returns something or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))
            got: T | None = await self._call(functools.partial(receive, wait), give_back)
            if got is not None:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                return None

    async def _settle(self, settle: Callable[[], None]) -> None:
        await self._call(settle)

    def _wrap(self, message: Message, credit: Credit | None) -> AsyncMessage:
        if credit is not None:
            message._settle = CreditHandle(message._settle, credit)
        return AsyncMessage(message, self._settle)

    async def open(self) -> ThreadedBus:
        await self._call(self._sync)
        return self

    # -- queues -------------------------------------------------------------------------------------------------
    async def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                            overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                            visibility_timeout: float = 30.0, ordered_by_key: bool = False,
                            ttl: float | None = None, dedup_window: float = 300.0) -> None:
        await self._call(lambda: self._sync().declare_queue(
            name, durable=durable, max_length=max_length, overflow=overflow, dead_letter=dead_letter,
            max_attempts=max_attempts, visibility_timeout=visibility_timeout, ordered_by_key=ordered_by_key,
            ttl=ttl, dedup_window=dedup_window))

    async def send(self, queue: str, body: Body, *, key: str | None = None, priority: int | None = None,
                   headers: dict[str, HeaderValue] | None = None, delay: float | None = None,
                   ttl: float | None = None, dedup_id: str | None = None) -> str:
        plain = unwrap(body)
        return await self._call(lambda: self._sync().send(queue, plain, key=key, priority=priority,  # type: ignore[arg-type]
                                                          headers=headers, delay=delay, ttl=ttl, dedup_id=dedup_id))

    async def send_many(self, queue: str, bodies: Iterable[Body]) -> list[str]:
        plain = [unwrap(body) for body in bodies]
        return await self._call(lambda: self._sync().send_many(queue, plain))  # type: ignore[arg-type]

    def _receive(self, queue: str, wait: float) -> Message | None:
        return self._sync().receive(queue, wait)

    async def receive(self, queue: str, timeout: float | None = None) -> AsyncMessage | None:
        self._check_open()
        timeout = check_seconds("timeout", timeout)
        message = await self._sliced(functools.partial(self._receive, queue), timeout, self._give_back)
        return None if message is None else self._wrap(message, None)

    async def _consume(self, queue: str, prefetch: int,
                       timeout: float | None) -> AsyncGenerator[AsyncMessage, None]:
        # Receives, one message per job, while fewer than ``prefetch`` are unsettled: nothing is taken ahead,
        # so nothing needs giving back when the iterator ends.
        await self._call(lambda: self._sync().queue_stats(queue))  # an unknown queue fails at the first iteration
        credit = Credit(asyncio.get_running_loop())
        idle_since = time.monotonic()
        while not self._closed:
            left = idle_left(timeout, idle_since, time.monotonic())
            if left is not None and left <= 0.0:
                return
            if credit.outstanding >= prefetch:
                await credit.wait(1.0 if left is None else min(1.0, left))
                continue
            wait = SLICE if left is None else min(SLICE, left)
            try:
                message = await self._call(functools.partial(self._receive, queue, wait), self._give_back)
            except Closed:
                return
            if message is None:
                continue
            credit.outstanding += 1
            yield self._wrap(message, credit)
            idle_since = time.monotonic()

    async def queue_stats(self, queue: str) -> QueueStats:
        return await self._call(lambda: self._sync().queue_stats(queue))

    async def queues(self) -> list[str]:
        return await self._call(lambda: self._sync().queues())

    # -- topics -------------------------------------------------------------------------------------------------
    async def publish(self, topic: str, body: Body, *, headers: dict[str, HeaderValue] | None = None,
                      key: str | None = None) -> str:
        plain = unwrap(body)
        return await self._call(lambda: self._sync().publish(topic, plain, headers=headers, key=key))  # type: ignore[arg-type]

    async def publish_many(self, topic: str, bodies: Iterable[Body]) -> list[str]:
        plain = [unwrap(body) for body in bodies]
        return await self._call(lambda: self._sync().publish_many(topic, plain))  # type: ignore[arg-type]

    async def _subscribe(self, pattern: str, group: str | None, durable: bool, start: Start) -> AsyncSubscription:
        subscription = await self._call(lambda: self._sync().subscribe(pattern, group=group, durable=durable,
                                                                       start=start))
        return _ThreadedSubscription(self, subscription)

    # -- services -----------------------------------------------------------------------------------------------
    async def request(self, service: str, body: Body, *, timeout: float | None = 5.0) -> Message:
        plain = unwrap(body)
        return await self._call(lambda: self._sync().request(service, plain, timeout=timeout))  # type: ignore[arg-type]

    async def serve(self, service: str, handler: AsyncHandler, *, stop: asyncio.Event | None = None) -> None:
        """Serve on a sync connection of its own, on a thread of its own; ``handler`` runs on this event loop."""
        self._check_open()
        check_name("service", service)
        check_handler(handler)
        loop = asyncio.get_running_loop()
        halt = threading.Event()
        finished: asyncio.Future[None] = loop.create_future()

        def answer(request: Message) -> Any:
            return asyncio.run_coroutine_threadsafe(call_handler(handler, request), loop).result()

        def run() -> None:
            error: BaseException | None = None
            try:
                with connect(self.url, **self._options) as server:
                    server.serve(service, answer, stop=halt)
            except BaseException as exc:  # noqa: BLE001 - raised in the serving task
                error = exc
            try:
                loop.call_soon_threadsafe(_finish, finished, error)
            except RuntimeError:  # the loop is closed
                pass

        self._serving.add(halt)
        watcher = None if stop is None else loop.create_task(_set_when(stop, halt))
        threading.Thread(target=run, name=f"ringbus-aio-serve-{service}", daemon=True).start()
        try:
            await asyncio.shield(finished)
        finally:
            halt.set()
            self._serving.discard(halt)
            if watcher is not None:
                watcher.cancel()

    # -- lifetime -----------------------------------------------------------------------------------------------
    async def close(self) -> None:
        if self._closed:
            return
        for halt in self._serving:
            halt.set()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._closed = True
        self._jobs.put(_Job(lambda: self._bus.close() if self._bus is not None else None, loop, future, None))
        self._jobs.put(None)  # the worker ends after the close
        await future

    @property
    def closed(self) -> bool:
        return self._closed


def _finish(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def _set_when(stop: asyncio.Event, halt: threading.Event) -> None:
    await stop.wait()
    halt.set()
