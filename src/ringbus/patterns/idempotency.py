"""Idempotent consumers for at-least-once delivery: a store of the message keys already processed.

Every ringbus queue delivers at least once: a message whose worker died, or
whose ack was lost, comes again. A handler whose effect must not happen
twice checks a :class:`DedupStore` first::

    store = SQLiteDedupStore("seen.db", ttl=24 * 3600)
    pool = WorkerPool(url, "orders", charge, idempotency=store)      # the pool checks and marks
    # or by hand, in any consumer:
    store.once(store.key_of(message), charge, message)

The window that remains: a key is marked *after* the handler succeeded, so a
crash between the handler's success and the mark (or two deliveries of one
message running at the same moment, which only happens when a handler
outlives the queue's visibility timeout) runs the handler again. Marking
before would turn that into a lost message instead; make the handler's own
effect idempotent (an upsert, a unique constraint) where even that window
matters.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ringbus.message import Message

__all__ = ["DedupStore", "MemoryDedupStore", "SQLiteDedupStore", "idempotent"]

log = logging.getLogger("ringbus.idempotency")

KeyFunction = Callable[[Message], str]


def message_id(message: Message) -> str:
    """The default key: the message id, which stays the same across redeliveries of one send."""
    return message.id


def _check_positive(name: str, value: object, *, allow_none: bool = False, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        what = "a positive int" if integer else "a positive number of seconds"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")


class DedupStore(ABC):
    """Keys of messages already processed, each remembered for ``ttl`` seconds.

    ``key`` picks what identifies a message: its id by default (the same for every redelivery of one send);
    a function of the message for a business key (an order id in a header) that also catches a producer
    sending the same thing twice.
    """

    #: Whether worker processes may share it (the file-backed store) or only threads of one process.
    shared_across_processes: bool = False

    def __init__(self, *, key: KeyFunction | None = None) -> None:
        if key is not None and not callable(key):
            raise TypeError(f"key must be a function of the message returning a str, not {type(key).__name__}")
        self._key = key or message_id

    def key_of(self, message: Message) -> str:
        """The key of ``message`` under this store's key function."""
        key = self._key(message)
        if not isinstance(key, str):
            raise TypeError(f"the dedup key function must return a str, returned {type(key).__name__}")
        return key

    @abstractmethod
    def seen(self, key: str) -> bool:
        """True if ``key`` was marked within the last ``ttl`` seconds."""

    @abstractmethod
    def mark(self, key: str) -> None:
        """Remember ``key`` as processed, from now for ``ttl`` seconds."""

    @abstractmethod
    def forget(self, key: str) -> None:
        """Drop ``key`` (a compensating action undid its effect, say)."""

    @abstractmethod
    def __len__(self) -> int:
        """Keys remembered now (expired ones may count until they are purged)."""

    def once(self, key: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Run ``fn(*args, **kwargs)`` unless ``key`` was seen; mark ``key`` after it returned.

        Returns True if ``fn`` ran, False if ``key`` had been seen. An exception from ``fn`` propagates and
        leaves ``key`` unmarked, so the next delivery tries again.
        """
        if self.seen(key):
            return False
        fn(*args, **kwargs)
        self.mark(key)
        return True

    def close(self) -> None:  # noqa: B027 - a no-op by default: a store holding nothing open keeps it
        """Release what the store holds open; idempotent."""


class MemoryDedupStore(DedupStore):
    """Keys in this process: a bounded LRU whose entries expire after ``ttl`` seconds.

    Safe across threads; not shared with other processes (use :class:`SQLiteDedupStore` for a process pool).
    When ``max_keys`` are held, marking a new key forgets the least recently marked one: size it to hold
    at least the keys of one redelivery horizon (visibility timeout x rate).

    Parameters
    ----------
    max_keys : int
        Most keys remembered.
    ttl : float
        Seconds a key is remembered.
    key : callable, optional
        ``key(message) -> str``; the message id by default.
    clock : callable
        Monotonic seconds; tests pass their own.
    """

    def __init__(self, *, max_keys: int = 100_000, ttl: float = 3600.0, key: KeyFunction | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(key=key)
        _check_positive("max_keys", max_keys, integer=True)
        _check_positive("ttl", ttl)
        self.max_keys = max_keys
        self.ttl = float(ttl)
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, float] = OrderedDict()  # key -> expiry, oldest mark first

    def seen(self, key: str) -> bool:
        with self._lock:
            expires = self._keys.get(key)
            if expires is None:
                return False
            if expires <= self._clock():
                del self._keys[key]
                return False
            return True

    def mark(self, key: str) -> None:
        with self._lock:
            keys = self._keys
            now = self._clock()
            keys[key] = now + self.ttl
            keys.move_to_end(key)
            while keys:  # expired ones leave first, then the oldest beyond the bound
                oldest, expires = next(iter(keys.items()))
                if expires > now and len(keys) <= self.max_keys:
                    break
                del keys[oldest]

    def forget(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def __reduce__(self) -> Any:
        raise TypeError("a MemoryDedupStore lives in one process and cannot be sent to another; "
                        "use SQLiteDedupStore(path) for worker processes")


class SQLiteDedupStore(DedupStore):
    """Keys in a SQLite file, shared by every thread and process that opens the same path.

    The file is in WAL mode (readers never wait for a writer) with ``synchronous=NORMAL``: a mark survives
    the process being killed, not necessarily a power cut. Each thread of each process opens its own
    connection on first use (SQLite connections must not cross threads or a fork); the store pickles as
    its path and settings, so a :class:`~ringbus.patterns.competing_consumers.WorkerPool` can hand it to
    its worker processes. Keys older than ``ttl`` count as unseen and are deleted every ``purge_every``
    marks, which bounds the file at about ``ttl`` x the marking rate.

    Parameters
    ----------
    path : str or os.PathLike
        The database file (created with its table if missing).
    ttl : float
        Seconds a key is remembered.
    key : callable, optional
        ``key(message) -> str``; the message id by default.
    busy_timeout : float
        Seconds a write waits for another process's write before failing.
    purge_every : int
        Marks between two deletions of expired keys.
    clock : callable
        Unix seconds (a wall clock: marks are compared across processes and restarts); tests pass their own.
    """

    shared_across_processes = True

    def __init__(self, path: str | os.PathLike[str], *, ttl: float = 7 * 24 * 3600.0,
                 key: KeyFunction | None = None, busy_timeout: float = 30.0, purge_every: int = 1000,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(key=key)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        _check_positive("ttl", ttl)
        _check_positive("busy_timeout", busy_timeout)
        _check_positive("purge_every", purge_every, integer=True)
        self.path = Path(path)
        self.ttl = float(ttl)
        self.busy_timeout = float(busy_timeout)
        self.purge_every = purge_every
        self._clock = clock
        self._local = threading.local()
        self._connection()  # create the file and table now, so a bad path fails here

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS ringbus_dedup (key TEXT PRIMARY KEY, marked REAL NOT NULL)")
        conn.execute("CREATE INDEX IF NOT EXISTS ringbus_dedup_marked ON ringbus_dedup (marked)")
        local.conn, local.pid, local.marks = conn, os.getpid(), 0
        return conn

    def seen(self, key: str) -> bool:
        row = self._connection().execute("SELECT marked FROM ringbus_dedup WHERE key = ?", (key,)).fetchone()
        return row is not None and row[0] > self._clock() - self.ttl

    def mark(self, key: str) -> None:
        conn = self._connection()
        now = self._clock()
        conn.execute("INSERT OR REPLACE INTO ringbus_dedup (key, marked) VALUES (?, ?)", (key, now))
        local = self._local
        local.marks += 1
        if local.marks >= self.purge_every:
            local.marks = 0
            purged = conn.execute("DELETE FROM ringbus_dedup WHERE marked <= ?", (now - self.ttl,)).rowcount
            if purged:
                log.debug("purged %d expired keys from %s", purged, self.path)

    def forget(self, key: str) -> None:
        self._connection().execute("DELETE FROM ringbus_dedup WHERE key = ?", (key,))

    def __len__(self) -> int:
        return int(self._connection().execute("SELECT count(*) FROM ringbus_dedup").fetchone()[0])

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteDedupStore({str(self.path)!r}, ttl={self.ttl:g})"


def idempotent(handler: Callable[[Message], Any], store: DedupStore) -> Callable[[Message], bool]:
    """Wrap ``handler`` so that it runs at most once per key of ``store`` (within the at-least-once window).

    The wrapper returns True if the handler ran, False if the message's key had been seen. Give the store to
    :class:`WorkerPool` (``idempotency=store``) instead to have skips counted in its stats.
    """
    if not isinstance(store, DedupStore):
        raise TypeError(f"store must be a DedupStore, not {type(store).__name__}")

    def run_once(message: Message) -> bool:
        return store.once(store.key_of(message), handler, message)

    run_once.__wrapped__ = handler  # type: ignore[attr-defined]  # as functools.wraps sets it: inspect.unwrap
    return run_once
