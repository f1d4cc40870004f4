"""Type stubs for ringbus._core._ring (the native Ring); the twin _ring_py has the same API."""

from collections.abc import Sequence
from types import GenericAlias
from typing import Any, Generic, SupportsIndex, TypeVar, final

from typing_extensions import Self

from ringbus._core._stats import QueueStatistics

_T = TypeVar("_T")

@final
class Ring(Generic[_T]):
    """A bounded FIFO of Python objects, safe across threads."""

    def __new__(cls, capacity: SupportsIndex) -> Self: ...
    def __class_getitem__(cls, item: Any, /) -> GenericAlias: ...
    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        """Append item; wait for room if block (up to timeout s), else raise Full; Closed once closed."""
    def put_nowait(self, item: _T) -> None:
        """Append item or raise Full at once."""
    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        """Remove and return the oldest item; Empty when none comes, Closed once closed and drained."""
    def get_nowait(self) -> _T:
        """Remove and return the oldest item or raise Empty at once."""
    def put_many(self, items: Sequence[_T]) -> int:
        """Append as many items as fit, in order, without blocking; returns how many."""
    def get_many(self, max_items: SupportsIndex) -> list[_T]:
        """Remove and return up to max_items of the oldest items, without blocking."""
    def clear(self) -> int:
        """Drop every item held; returns how many."""
    def close(self) -> None:
        """Refuse further puts and wake every waiter; getters drain, then see Closed."""
    @property
    def closed(self) -> bool: ...
    @property
    def capacity(self) -> int: ...
    def __len__(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    def qsize(self) -> int: ...
    def statistics(self) -> QueueStatistics: ...
