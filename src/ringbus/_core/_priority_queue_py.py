"""Pure-Python twin of the native PriorityQueue: the reference model for tests and the fallback build."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ringbus._core._checks import checked_count, checked_priority
from ringbus._core._queue_py import BlockingQueueBase
from ringbus._core._stats import QueueStatistics

T = TypeVar("T")


class PriorityQueue(BlockingQueueBase, Generic[T]):
    """Highest priority first, FIFO among equals, safe across threads (see ringbus._core._priority_queue)."""

    _kind = "PriorityQueue"
    if not TYPE_CHECKING:  # PriorityQueue[int] at run time: a types.GenericAlias, as for the native class
        __class_getitem__ = classmethod(GenericAlias)

    def __init__(self, capacity: int | None = None) -> None:
        if capacity is not None:
            capacity = checked_count(capacity, "capacity", 1)
        super().__init__()
        self._capacity = capacity
        # (-priority, seq, item): heapq is a min-heap, and seq breaks ties in put order
        self._heap: list[tuple[int, int, T]] = []
        self._seq = itertools.count()

    def _try_push(self, item: Any, *extra: Any) -> bool:
        if self._capacity is not None and len(self._heap) >= self._capacity:
            return False
        heapq.heappush(self._heap, (-extra[0], next(self._seq), item))
        return True

    def _try_pop(self) -> tuple[bool, Any]:
        if self._heap:
            return True, heapq.heappop(self._heap)[2]
        return False, None

    def _size(self) -> int:
        return len(self._heap)

    def put(self, item: T, priority: int = 0, block: bool = True, timeout: float | None = None) -> None:
        self._put(item, (checked_priority(priority),), block, timeout)

    def put_nowait(self, item: T, priority: int = 0) -> None:
        self.put(item, priority, False)

    def put_many(self, items: Sequence[T], priority: int = 0) -> int:
        prio = checked_priority(priority)
        return self._put_many(items, lambda item: self._try_push(item, prio))

    def get_many(self, max_items: int) -> list[T]:
        return self._get_many(checked_count(max_items, "max_items"))

    def clear(self) -> int:
        with self._lock:
            n = len(self._heap)
            self._heap.clear()
            self._not_full.notify_all()
        return n

    @property
    def capacity(self) -> int | None:
        return self._capacity

    def full(self) -> bool:
        return self._capacity is not None and len(self._heap) >= self._capacity

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            size=len(self._heap),
            capacity=self._capacity,
            getters_waiting=self._getters_waiting,
            putters_waiting=self._putters_waiting,
            closed=self._closed,
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<ringbus.PriorityQueue size={len(self)} capacity={self._capacity}{state}>"
