"""The asyncio Bus contract: the sync :class:`ringbus.Bus` method names, returning awaitables.

What every asyncio backend shares: :class:`AsyncMessage` (a delivered message settled with ``await``),
:class:`AsyncBus` and :class:`AsyncSubscription` (the abstract classes), :class:`Credit` (a consume iterator's
unsettled deliveries, given back by settles from any thread), and :func:`claim`, the one way a delivery
crosses an ``await`` without being lost when the awaiting task is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import (
    TYPE_CHECKING,
    Any,
    TypeVar,
    Union,
)

from ringbus.bus import Overflow, QueueStats, Start, check_seconds
from ringbus.errors import Closed, RingbusError
from ringbus.message import HeaderValue, Message, SettleHandle

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

__all__ = [
    "AsyncBus",
    "AsyncMessage",
    "AsyncSubscription",
    "AsyncHandler",
    "Body",
    "Credit",
    "CreditHandle",
    "Runner",
    "Subscribing",
    "claim",
    "unwrap",
]

T = TypeVar("T")

Body = Union[bytes, bytearray, memoryview, Message, "AsyncMessage"]
# A service handler: sync or async, returning the reply's body or a Message.
Reply = bytes | bytearray | memoryview | Message
AsyncHandler = Callable[[Message], Reply | Awaitable[Reply]]
# Runs a sync settle where it may run (the adapter's worker thread); None: call it here, at once.
Runner = Callable[[Callable[[], None]], Awaitable[None]]


def unwrap(body: object) -> object:
    """The Message inside an AsyncMessage (so it can be sent on); anything else unchanged."""
    return body.message if isinstance(body, AsyncMessage) else body


class AsyncMessage:
    """A message delivered by an :class:`AsyncBus`: the :class:`ringbus.Message` fields, settled with ``await``.

    ``await msg.ack()``, ``await msg.nack(requeue=True, delay=None)``, ``await msg.reject()``; the plain
    message is ``msg.message`` (its sync ``ack()`` works too, from any thread).
    """

    __slots__ = ("message", "_run")

    def __init__(self, message: Message, run: Runner | None = None) -> None:
        self.message = message
        self._run = run

    # The envelope, read through (properties, not __getattr__: one attribute lookup each).
    @property
    def id(self) -> str:
        return self.message.id

    @property
    def body(self) -> bytes | bytearray | memoryview:
        return self.message.body

    @property
    def key(self) -> str | None:
        return self.message.key

    @property
    def priority(self) -> int:
        return self.message.priority

    @property
    def headers(self) -> dict[str, HeaderValue]:
        return self.message.headers

    @property
    def timestamp(self) -> float:
        return self.message.timestamp

    @property
    def attempts(self) -> int:
        return self.message.attempts

    @property
    def reply_to(self) -> str | None:
        return self.message.reply_to

    @property
    def correlation_id(self) -> str | None:
        return self.message.correlation_id

    @property
    def content_type(self) -> str:
        return self.message.content_type

    @property
    def meta(self) -> dict[str, Any]:
        return self.message.meta

    def value(self, allow_pickle: bool = False) -> Any:
        """Deserialize the body (see :meth:`ringbus.Message.value`)."""
        return self.message.value(allow_pickle=allow_pickle)

    async def ack(self) -> None:
        """Settle as processed (see :meth:`ringbus.Message.ack`)."""
        if self._run is None:
            self.message.ack()
        else:
            await self._run(self.message.ack)

    async def nack(self, requeue: bool = True, delay: float | None = None) -> None:
        """Settle as failed: requeue (after ``delay`` seconds) or drop (see :meth:`ringbus.Message.nack`)."""
        if self._run is None:
            self.message.nack(requeue, delay)
        else:
            message = self.message
            await self._run(lambda: message.nack(requeue, delay))

    async def reject(self) -> None:
        """Settle as unprocessable: to the dead-letter queue (see :meth:`ringbus.Message.reject`)."""
        if self._run is None:
            self.message.reject()
        else:
            await self._run(self.message.reject)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncMessage):
            return self.message == other.message
        if isinstance(other, Message):
            return self.message == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like Message: compared by content

    def __repr__(self) -> str:
        return f"Async{self.message!r}"


async def claim(future: asyncio.Future[T], give_back: Callable[[T], None]) -> T:
    """Await ``future``; if the awaiting task is cancelled once the result is in, ``give_back`` the result.

    asyncio can cancel a task after the future it awaited got its result but before the task ran again; the
    result would be dropped. Deliveries must not be: whoever resolves the future checks ``future.cancelled()``
    and gives back what came too late; this covers the other half of the race.
    """
    try:
        return await future
    except asyncio.CancelledError:
        if future.done() and not future.cancelled() and future.exception() is None:
            give_back(future.result())
        raise


class Credit:
    """Deliveries of one consume iterator that are with the application and not yet settled.

    A settle from any thread gives one back (on the loop's thread); :meth:`wait` returns when one comes back.
    """

    __slots__ = ("outstanding", "_loop", "_thread", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.outstanding = 0
        self._loop = loop
        self._thread = threading.get_ident()
        self._waiter: asyncio.Future[None] | None = None

    def settled(self) -> None:
        """One delivery was settled (call from any thread)."""
        if threading.get_ident() == self._thread:
            self._give()
        else:
            try:
                self._loop.call_soon_threadsafe(self._give)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def _give(self) -> None:
        self.outstanding -= 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a settle."""
        waiter = self._waiter = self._loop.create_future()
        handle = self._loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class CreditHandle:
    """A settle handle that passes the settle on, then gives a consume iterator its credit back."""

    __slots__ = ("inner", "credit")

    def __init__(self, inner: SettleHandle, credit: Credit) -> None:
        self.inner = inner
        self.credit = credit

    def ack(self, message: Message) -> None:
        self.inner.ack(message)
        self.credit.settled()

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self.inner.nack(message, requeue, delay)
        self.credit.settled()

    def reject(self, message: Message) -> None:
        self.inner.reject(message)
        self.credit.settled()


def idle_left(timeout: float | None, idle_since: float, now: float) -> float | None:
    """Seconds a consume iterator may still wait before ``timeout`` of idleness ends it (None: for ever)."""
    return None if timeout is None else timeout - (now - idle_since)


class AsyncSubscription(ABC):
    """Messages published on topics matching ``pattern``: ``async for m in sub`` or ``await sub.receive()``.

    Same semantics as :class:`ringbus.Subscription`; messages are :class:`AsyncMessage` (ack is a no-op on an
    ephemeral subscription, required on a durable one).
    """

    pattern: str
    group: str | None
    durable: bool

    @abstractmethod
    async def receive(self, timeout: float | None = None) -> AsyncMessage | None:
        """The next message, or None if none came within ``timeout`` seconds (None waits for ever)."""

    @property
    @abstractmethod
    def dropped(self) -> int:
        """Messages this subscriber lost because it fell behind (ephemeral subscriptions; as last reported)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop receiving; idempotent. A durable group's queue stays and keeps collecting messages."""

    def __aiter__(self) -> AsyncIterator[AsyncMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AsyncMessage]:
        while True:
            try:
                message = await self.receive(timeout=None)
            except Closed:
                return
            if message is None:  # pragma: no cover - receive(None) only returns None when closed
                return
            yield message

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Subscribing:
    """What :meth:`AsyncBus.subscribe` returns: ``await`` it, ``async with`` it, or ``async for`` over it.

    The subscription starts when first awaited, entered or iterated; iterating it directly closes it when the
    loop ends.
    """

    __slots__ = ("_start", "_subscription")

    def __init__(self, start: Callable[[], Awaitable[AsyncSubscription]]) -> None:
        self._start = start
        self._subscription: AsyncSubscription | None = None

    async def _open(self) -> AsyncSubscription:
        if self._subscription is None:
            self._subscription = await self._start()
        return self._subscription

    def __await__(self) -> Generator[Any, None, AsyncSubscription]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncSubscription:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        if self._subscription is not None:
            await self._subscription.close()

    def __aiter__(self) -> AsyncIterator[AsyncMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[AsyncMessage]:
        subscription = await self._open()
        try:
            async for message in subscription:
                yield message
        finally:
            await subscription.close()


class AsyncBus(ABC):
    """A connection to a message broker for asyncio code: the :class:`ringbus.Bus` contract, awaited.

    Open it with :func:`ringbus.aio.connect`; ``async with`` closes it. Every method has the sync Bus's name,
    arguments and errors, and returns an awaitable; ``consume`` returns an async iterator and ``subscribe``
    something to ``await``, ``async with`` or ``async for``. A bus belongs to the event loop that first uses it.
    """

    url: str
    unsupported_features: frozenset[str] = frozenset()

    async def open(self) -> Self:
        """Connect now (otherwise the first call does); connection errors are raised here. Returns the bus."""
        return self

    def __await__(self) -> Generator[Any, None, Self]:
        return self.open().__await__()

    # -- queues -------------------------------------------------------------------------------------------------
    @abstractmethod
    async def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                            overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                            visibility_timeout: float = 30.0, ordered_by_key: bool = False,
                            ttl: float | None = None, dedup_window: float = 300.0) -> None:
        """Create ``name`` if it does not exist (see :meth:`ringbus.Bus.declare_queue`)."""

    @abstractmethod
    async def send(self, queue: str, body: Body, *, key: str | None = None, priority: int | None = None,
                   headers: dict[str, HeaderValue] | None = None, delay: float | None = None,
                   ttl: float | None = None, dedup_id: str | None = None) -> str:
        """Put one message on ``queue``; its id once the broker holds it (see :meth:`ringbus.Bus.send`).

        A cancelled send may or may not have been stored (like a send that timed out): resend with a
        ``dedup_id`` to be sure.
        """

    async def send_many(self, queue: str, bodies: Iterable[Body]) -> list[str]:
        """Send several messages in order; return their ids."""
        return [await self.send(queue, body) for body in bodies]

    @abstractmethod
    async def receive(self, queue: str, timeout: float | None = None) -> AsyncMessage | None:
        """The next message of ``queue``, or None after ``timeout`` seconds (None: wait for ever).

        Cancelling it loses nothing: a message taken for it goes back to the queue.
        """

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> AsyncGenerator[AsyncMessage, None]:
        """``async for msg in bus.consume(queue)``: messages with up to ``prefetch`` unsettled at once.

        Ends after ``timeout`` seconds without a message (None: never) or when the bus closes. Cancelling an
        iteration (or ``aclose()``) ends it; messages fetched but not yet handed out go back to the queue at once
        without counting an attempt. Errors about the queue itself may surface at the first iteration.
        """
        from ringbus.backends._common import check_prefetch

        self._check_open()
        check_prefetch(prefetch)
        return self._consume(queue, prefetch, check_seconds("timeout", timeout))

    @abstractmethod
    def _consume(self, queue: str, prefetch: int, timeout: float | None) -> AsyncGenerator[AsyncMessage, None]:
        """The iterator :meth:`consume` returns, its arguments checked."""

    @abstractmethod
    async def queue_stats(self, queue: str) -> QueueStats:
        """Depth, in-flight, dead letters, consumers and rates of ``queue``."""

    @abstractmethod
    async def queues(self) -> list[str]:
        """Names of the declared queues."""

    # -- topics -------------------------------------------------------------------------------------------------
    @abstractmethod
    async def publish(self, topic: str, body: Body, *, headers: dict[str, HeaderValue] | None = None,
                      key: str | None = None) -> str:
        """Publish ``body`` on ``topic`` to every matching subscription; return its id."""

    async def publish_many(self, topic: str, bodies: Iterable[Body]) -> list[str]:
        """Publish several messages on ``topic`` in order; return their ids."""
        return [await self.publish(topic, body) for body in bodies]

    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscribing:
        """Receive what is published on topics matching ``pattern`` (see :meth:`ringbus.Bus.subscribe`).

        ``sub = await bus.subscribe(p)``, ``async with bus.subscribe(p) as sub``, or ``async for m in
        bus.subscribe(p)``. Arguments are checked at once.
        """
        from ringbus.backends._common import check_subscription

        self._check_open()
        check_subscription(pattern, group, durable, start)
        return Subscribing(lambda: self._subscribe(pattern, group, durable, start))

    @abstractmethod
    async def _subscribe(self, pattern: str, group: str | None, durable: bool, start: Start) -> AsyncSubscription:
        """Start the subscription :meth:`subscribe` describes, its arguments checked."""

    # -- services -----------------------------------------------------------------------------------------------
    @abstractmethod
    async def request(self, service: str, body: Body, *, timeout: float | None = 5.0) -> Message:
        """Call ``service`` and return its reply (:class:`ringbus.Empty` after ``timeout`` seconds)."""

    @abstractmethod
    async def serve(self, service: str, handler: AsyncHandler, *, stop: asyncio.Event | None = None) -> None:
        """Answer requests to ``service`` until ``stop`` is set, the task is cancelled or the bus closes.

        ``handler(message)`` may be a plain function (it runs on the event loop: keep it short) or a coroutine
        function; it returns the reply's body or a Message. An exception goes back to the caller as a
        :class:`ringbus.RingbusError` and is logged here; serving goes on.
        """

    # -- lifetime -----------------------------------------------------------------------------------------------
    @abstractmethod
    async def close(self) -> None:
        """Release the connection; unsettled messages go back to their queues. Idempotent."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called."""

    def _check_open(self) -> None:
        if self.closed:
            raise Closed(f"bus {self.url!r} is closed")

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url!r}{' closed' if self.closed else ''}>"


def check_handler(handler: object) -> None:
    if not callable(handler):
        raise TypeError(f"handler must be callable (a function or a coroutine function), not "
                        f"{type(handler).__name__}")


async def call_handler(handler: AsyncHandler, request: Message) -> object:
    """``handler(request)``, awaited if it returned an awaitable."""
    result = handler(request)
    if isinstance(result, Awaitable):
        return await result
    return result


def loop_guard(owner: asyncio.AbstractEventLoop | None, url: str) -> asyncio.AbstractEventLoop:
    """The running loop, which must be ``owner`` if the bus already has one."""
    loop = asyncio.get_running_loop()
    if owner is not None and loop is not owner:
        raise RingbusError(f"bus {url!r} belongs to the event loop that first used it; connect one bus per loop")
    return loop
