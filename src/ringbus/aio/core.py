"""Awaitable waits on the core queues: ``await AsyncRing(ring).get()`` never blocks the event loop.

Both adapters wrap a :class:`ringbus.Ring` / :class:`ringbus.PriorityQueue` that threads may keep using
directly. A wait is ``get_nowait`` / ``put_nowait`` tried again after a short sleep that grows while nothing
comes (see :mod:`ringbus.aio._wait`), never a blocking ``get`` in a thread: such a thread could not give an
item back if the waiting task were cancelled, and the item would be lost. A put or get through an adapter
wakes the adapter's sleepers at once, in any event loop of the process; one made by a thread on the raw
queue is seen within ``POLL_MAX`` seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, SupportsIndex, TypeVar

from ringbus._core import PriorityQueue, QueueStatistics, Ring
from ringbus.aio._wait import Doorbell, poll
from ringbus.bus import check_seconds
from ringbus.errors import Full

__all__ = ["AsyncRing", "AsyncPriorityQueue"]

T = TypeVar("T")


def _queue_like(value: object) -> bool:
    # Duck-typed: the native classes and their pure-Python twins (ringbus._core._ring_py) both qualify.
    return all(callable(getattr(value, name, None)) for name in ("get_nowait", "put_nowait", "get_many", "close"))


class _Adapter(Generic[T]):
    """What both adapters share: doorbells, the non-waiting calls, and size and life-cycle passed through."""

    _queue: Ring[T] | PriorityQueue[T]

    def __init__(self) -> None:
        self._items = Doorbell()  # rung when an item went in: getters may find it
        self._room = Doorbell()  # rung when an item went out: putters may find room

    async def get(self, timeout: float | None = None) -> T:
        """Remove and return the next item, waiting up to ``timeout`` seconds (None: for ever).

        Raises ``ringbus.Empty`` when none came in time, ``ringbus.Closed`` once closed and drained.
        Cancelling it takes nothing.
        """
        item = await poll(self._queue.get_nowait, check_seconds("timeout", timeout), self._items)
        self._room.ring()
        return item

    def get_nowait(self) -> T:
        """Remove and return the next item or raise ``ringbus.Empty`` at once."""
        item = self._queue.get_nowait()
        self._room.ring()
        return item

    def get_many(self, max_items: SupportsIndex) -> list[T]:
        """Up to ``max_items`` of the next items, without waiting."""
        items = self._queue.get_many(max_items)
        if items:
            self._room.ring()
        return items

    def close(self) -> None:
        """Refuse further puts; getters drain, then see ``ringbus.Closed``. Wakes every waiter."""
        self._queue.close()
        self._items.ring()
        self._room.ring()

    @property
    def closed(self) -> bool:
        return self._queue.closed

    def __len__(self) -> int:
        return len(self._queue)

    def empty(self) -> bool:
        return self._queue.empty()

    def full(self) -> bool:
        return self._queue.full()

    def statistics(self) -> QueueStatistics:
        return self._queue.statistics()

    def _put_done(self, added: int = 1) -> None:
        if added:
            self._items.ring()


class AsyncRing(_Adapter[T]):
    """A :class:`ringbus.Ring` for asyncio: ``await put(item, timeout)``, ``await get(timeout)``.

    Parameters
    ----------
    ring : Ring or int
        The ring to wrap (threads may use it too), or a capacity to make a new one.
    """

    def __init__(self, ring: Ring[T] | int) -> None:
        super().__init__()
        if isinstance(ring, bool) or not (isinstance(ring, int) or _queue_like(ring)):
            raise TypeError(f"AsyncRing wraps a ringbus.Ring or makes one of a capacity (int), not "
                            f"{type(ring).__name__}")
        self.ring: Ring[T] = Ring(ring) if isinstance(ring, int) else ring
        self._queue = self.ring

    async def put(self, item: T, timeout: float | None = None) -> None:
        """Append ``item``, waiting up to ``timeout`` seconds for room (None: for ever).

        Raises ``ringbus.Full`` when there was no room in time, ``ringbus.Closed`` once closed.
        """
        ring = self.ring
        await poll(lambda: ring.put_nowait(item), check_seconds("timeout", timeout), self._room, Full)
        self._put_done()

    def put_nowait(self, item: T) -> None:
        """Append ``item`` or raise ``ringbus.Full`` at once."""
        self.ring.put_nowait(item)
        self._put_done()

    def put_many(self, items: Sequence[T]) -> int:
        """Append as many of ``items`` as fit, in order, without waiting; returns how many."""
        added = self.ring.put_many(items)
        self._put_done(added)
        return added

    @property
    def capacity(self) -> int:
        return self.ring.capacity

    def __repr__(self) -> str:
        return f"<AsyncRing {len(self)}/{self.capacity}{' closed' if self.closed else ''}>"


class AsyncPriorityQueue(_Adapter[T]):
    """A :class:`ringbus.PriorityQueue` for asyncio: ``await put(item, priority, timeout)``, ``await get()``.

    Parameters
    ----------
    queue : PriorityQueue, int or None
        The queue to wrap (threads may use it too), or a capacity (None: unbounded) to make a new one.
    """

    def __init__(self, queue: PriorityQueue[T] | int | None = None) -> None:
        super().__init__()
        if isinstance(queue, bool) or not (queue is None or isinstance(queue, int) or _queue_like(queue)):
            raise TypeError(f"AsyncPriorityQueue wraps a ringbus.PriorityQueue or makes one of a capacity "
                            f"(int or None), not {type(queue).__name__}")
        self.queue: PriorityQueue[T] = PriorityQueue(queue) if queue is None or isinstance(queue, int) else queue
        self._queue = self.queue

    async def put(self, item: T, priority: SupportsIndex = 0, timeout: float | None = None) -> None:
        """Add ``item`` at ``priority`` (higher first), waiting up to ``timeout`` seconds for room if bounded."""
        queue = self.queue
        await poll(lambda: queue.put_nowait(item, priority), check_seconds("timeout", timeout), self._room, Full)
        self._put_done()

    def put_nowait(self, item: T, priority: SupportsIndex = 0) -> None:
        """Add ``item`` at ``priority`` or raise ``ringbus.Full`` at once."""
        self.queue.put_nowait(item, priority)
        self._put_done()

    def put_many(self, items: Sequence[T], priority: SupportsIndex = 0) -> int:
        """Add as many of ``items`` as fit, all at ``priority``, without waiting; returns how many."""
        added = self.queue.put_many(items, priority)
        self._put_done(added)
        return added

    @property
    def capacity(self) -> int | None:
        return self.queue.capacity

    def __repr__(self) -> str:
        return f"<AsyncPriorityQueue {len(self)}/{self.capacity}{' closed' if self.closed else ''}>"
