"""Pure-Python twin of the native Ring: the reference model for tests and the fallback build."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from types import GenericAlias
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ringbus._core._checks import checked_count
from ringbus._core._queue_py import BlockingQueueBase
from ringbus._core._stats import QueueStatistics

T = TypeVar("T")


class Ring(BlockingQueueBase, Generic[T]):
    """A bounded FIFO of Python objects, safe across threads (see ringbus._core._ring)."""

    _kind = "Ring"
    if not TYPE_CHECKING:  # Ring[int] at run time: a types.GenericAlias, as for the native class
        __class_getitem__ = classmethod(GenericAlias)

    def __init__(self, capacity: int) -> None:
        n = checked_count(capacity, "capacity", 1)
        super().__init__()
        self._capacity = n
        self._items: deque[T] = deque()

    def _try_push(self, item: Any, *extra: Any) -> bool:
        if len(self._items) >= self._capacity:
            return False
        self._items.append(item)
        return True

    def _try_pop(self) -> tuple[bool, Any]:
        if self._items:
            return True, self._items.popleft()
        return False, None

    def _size(self) -> int:
        return len(self._items)

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        self._put(item, (), block, timeout)

    def put_nowait(self, item: T) -> None:
        self._put(item, (), False, None)

    def put_many(self, items: Sequence[T]) -> int:
        return self._put_many(items, self._try_push)

    def get_many(self, max_items: int) -> list[T]:
        return self._get_many(checked_count(max_items, "max_items"))

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
            self._not_full.notify_all()
        return n

    @property
    def capacity(self) -> int:
        return self._capacity

    def full(self) -> bool:
        return len(self._items) >= self._capacity

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            size=len(self._items),
            capacity=self._capacity,
            getters_waiting=self._getters_waiting,
            putters_waiting=self._putters_waiting,
            closed=self._closed,
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<ringbus.Ring size={len(self)} capacity={self._capacity}{state}>"
