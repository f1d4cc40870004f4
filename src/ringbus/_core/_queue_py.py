"""The blocking machinery the pure-Python twins share: a lock, two conditions, close."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ringbus._core._checks import deadline, remaining
from ringbus.errors import Closed, Empty, Full


class BlockingQueueBase:
    """Put/get with block and timeout over abstract _try_push/_try_pop, as the native queues do."""

    _kind = "queue"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._closed = False
        self._getters_waiting = 0
        self._putters_waiting = 0

    # subclasses implement these, called with the lock held
    def _try_push(self, item: Any, *extra: Any) -> bool:
        raise NotImplementedError

    def _try_pop(self) -> tuple[bool, Any]:
        raise NotImplementedError

    def _size(self) -> int:
        raise NotImplementedError

    def _put(self, item: Any, extra: tuple[Any, ...], block: bool, timeout: object) -> None:
        with self._lock:
            if self._closed:
                raise Closed(f"put() on a closed {self._kind}")
            if self._try_push(item, *extra):
                self._not_empty.notify()
                return
            if not block:
                raise Full(f"{self._kind} is full")
            until = deadline(timeout)
            self._putters_waiting += 1
            try:
                while True:
                    left = remaining(until)
                    if left is not None and left <= 0:
                        raise Full(f"{self._kind} is full: put() timed out")
                    self._not_full.wait(left)
                    if self._closed:
                        raise Closed(f"{self._kind} was closed while put() waited")
                    if self._try_push(item, *extra):
                        self._not_empty.notify()
                        return
            finally:
                self._putters_waiting -= 1

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        with self._lock:
            ok, item = self._try_pop()
            if ok:
                self._not_full.notify()
                return item
            if self._closed:
                raise Closed(f"get() on a closed, drained {self._kind}")
            if not block:
                raise Empty(f"{self._kind} is empty")
            until = deadline(timeout)
            self._getters_waiting += 1
            try:
                while True:
                    left = remaining(until)
                    if left is not None and left <= 0:
                        raise Empty(f"{self._kind} is empty: get() timed out")
                    self._not_empty.wait(left)
                    ok, item = self._try_pop()
                    if ok:
                        self._not_full.notify()
                        return item
                    if self._closed:
                        raise Closed(f"{self._kind} was closed while get() waited")
            finally:
                self._getters_waiting -= 1

    def get_nowait(self) -> Any:
        return self.get(False)

    def _put_many(self, items: Any, push: Callable[[Any], bool]) -> int:
        if self._closed:
            raise Closed(f"put_many() on a closed {self._kind}")
        if isinstance(items, dict) or not hasattr(type(items), "__getitem__"):
            raise TypeError(f"items must be a sequence (list, tuple, ...), got {type(items).__name__}")
        n = 0
        with self._lock:
            for item in items:
                if not push(item):
                    break
                n += 1
            if n:
                self._not_empty.notify_all()
        return n

    def _get_many(self, want: int) -> list[Any]:
        out: list[Any] = []
        with self._lock:
            if self._closed and self._size() == 0:
                raise Closed(f"get_many() on a closed, drained {self._kind}")
            while len(out) < want:
                ok, item = self._try_pop()
                if not ok:
                    break
                out.append(item)
            if out:
                self._not_full.notify_all()
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return self._size()

    def qsize(self) -> int:
        return self._size()

    def empty(self) -> bool:
        return self._size() == 0
