"""Type stubs for ringbus._core._priority_queue (the native PriorityQueue); the twin has the same API."""

from collections.abc import Sequence
from types import GenericAlias
from typing import Any, Generic, SupportsIndex, TypeVar, final

from typing_extensions import Self

from ringbus._core._stats import QueueStatistics

_T = TypeVar("_T")

@final
class PriorityQueue(Generic[_T]):
    """Highest priority first (an int64, default 0), FIFO among equals; safe across threads."""

    def __new__(cls, capacity: SupportsIndex | None = None) -> Self: ...
    def __class_getitem__(cls, item: Any, /) -> GenericAlias: ...
    def put(self, item: _T, priority: SupportsIndex = 0, block: bool = True, timeout: float | None = None) -> None:
        """Add item at priority; wait for room if bounded and block, else raise Full; Closed once closed."""
    def put_nowait(self, item: _T, priority: SupportsIndex = 0) -> None:
        """Add item at priority or raise Full at once."""
    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """Remove and return the most urgent item; Empty when none comes, Closed once closed and drained."""
    def get_nowait(self) -> _T:
        """Remove and return the most urgent item or raise Empty at once."""
    def put_many(self, items: Sequence[_T], priority: SupportsIndex = 0) -> int:
        """Add as many items as fit, all at one priority, without blocking; returns how many."""
    def get_many(self, max_items: SupportsIndex) -> list[_T]:
        """Remove and return up to max_items, most urgent first, without blocking."""
    def clear(self) -> int:
        """Drop every item held; returns how many."""
    def close(self) -> None:
        """Refuse further puts and wake every waiter; getters drain, then see Closed."""
    @property
    def closed(self) -> bool: ...
    @property
    def capacity(self) -> int | None: ...
    def __len__(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    def qsize(self) -> int: ...
    def statistics(self) -> QueueStatistics: ...
