"""Pure-Python twin of the native ArrayRing: the reference model for tests and the fallback build."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ringbus._core._checks import checked_count
from ringbus._core._stats import QueueStatistics
from ringbus.errors import Closed


def checked_record_dtype(dtype: Any) -> np.dtype[Any]:
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: {exc}") from None
    if dt.hasobject:
        raise TypeError(f"dtype must hold plain data, not Python objects: {dt}")
    if dt.subdtype is not None:
        raise ValueError(f"dtype must be a record type, not a sub-array {dt}; wrap it in a structured field")
    if dt.itemsize == 0:
        raise ValueError(f"dtype must have a non-zero size: {dt}")
    return dt


class ArrayRing:
    """A bounded ring of numpy records of one dtype (see ringbus._core._array_ring)."""

    def __init__(self, dtype: Any, capacity: int) -> None:
        dt = checked_record_dtype(dtype)
        n = checked_count(capacity, "capacity", 1)
        self._dtype = dt
        self._data = np.empty(n, dt)
        self._head = 0
        self._size = 0
        self._closed = False
        self._lock = threading.Lock()

    def put_many(self, records: Any) -> int:
        if self._closed:
            raise Closed("put_many() on a closed ArrayRing")
        if not isinstance(records, np.ndarray):
            raise TypeError(f"records must be a numpy.ndarray of dtype {self._dtype}, got {type(records).__name__}")
        if records.dtype != self._dtype:
            raise TypeError(f"records have dtype {records.dtype}, this ArrayRing holds {self._dtype}")
        if records.ndim != 1:
            raise ValueError(f"records must be a 1-d array of records, got shape {records.shape}")
        with self._lock:
            cap = len(self._data)
            n = min(len(records), cap - self._size)
            tail = (self._head + self._size) % cap
            first = min(n, cap - tail)
            self._data[tail : tail + first] = records[:first]
            self._data[: n - first] = records[first:n]
            self._size += n
        return n

    def get_many(self, max_records: int, out: Any = None) -> Any:
        want = checked_count(max_records, "max_records")
        with self._lock:
            if self._size == 0 and self._closed:
                raise Closed("get_many() on a closed, drained ArrayRing")
            want = min(want, self._size)
            if out is None:
                target = np.empty(want, self._dtype)
            else:
                if not isinstance(out, np.ndarray) or out.dtype != self._dtype or out.ndim != 1:
                    raise TypeError(f"out must be a 1-d numpy.ndarray of dtype {self._dtype}")
                if not out.flags.c_contiguous:
                    raise ValueError("out must be C-contiguous")
                want = min(want, len(out))
                target = out[:want]
            cap = len(self._data)
            first = min(want, cap - self._head)
            target[:first] = self._data[self._head : self._head + first]
            target[first:] = self._data[: want - first]
            self._head = (self._head + want) % cap
            self._size -= want
            if self._size == 0:
                self._head = 0
        return target

    def clear(self) -> int:
        with self._lock:
            n, self._head, self._size = self._size, 0, 0
        return n

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def capacity(self) -> int:
        return len(self._data)

    def __len__(self) -> int:
        return self._size

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            size=self._size, capacity=len(self._data), getters_waiting=0, putters_waiting=0, closed=self._closed
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<ringbus.ArrayRing dtype={self._dtype} size={self._size} capacity={len(self._data)}{state}>"
