"""Type stubs for ringbus._core._array_ring (the native ArrayRing); the twin has the same API."""

from typing import Any, SupportsIndex, final

import numpy as np
from numpy.typing import DTypeLike, NDArray
from typing_extensions import Self

from ringbus._core._stats import QueueStatistics

@final
class ArrayRing:
    """A bounded ring of numpy records of one dtype, stored contiguously; never blocks."""

    def __new__(cls, dtype: DTypeLike, capacity: SupportsIndex) -> Self: ...
    def put_many(self, records: NDArray[Any]) -> int:
        """Copy in as many records (a 1-d array of this dtype) as fit; returns how many."""
    def get_many(self, max_records: SupportsIndex, out: NDArray[Any] | None = None) -> NDArray[Any]:
        """Copy out up to max_records of the oldest records (into out's first slots if given)."""
    def clear(self) -> int:
        """Drop every record held; returns how many."""
    def close(self) -> None:
        """Refuse further puts; get_many drains, then raises Closed."""
    @property
    def closed(self) -> bool: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def capacity(self) -> int: ...
    def __len__(self) -> int: ...
    def statistics(self) -> QueueStatistics: ...
