"""Dedup stores: a key runs once within its ttl, the memory store stays bounded, the SQLite one is shared."""

from __future__ import annotations

import multiprocessing
import pickle
import sqlite3
from pathlib import Path

import pytest

from ringbus.message import Message
from ringbus.patterns.idempotency import DedupStore, MemoryDedupStore, SQLiteDedupStore, idempotent

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(**kwargs: object) -> DedupStore:
        if request.param == "memory":
            return MemoryDedupStore(**kwargs)  # type: ignore[arg-type]
        return SQLiteDedupStore(tmp_path / "seen.db", **kwargs)  # type: ignore[arg-type]

    return make


def test_once_runs_a_key_once(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store()
    runs: list[str] = []
    results = [store.once(key, runs.append, key) for key in ["a", "b", "a", "c", "b", "a"]]
    assert runs == ["a", "b", "c"]
    assert results == [True, True, False, True, False, False]
    assert len(store) == 3


def test_a_failure_leaves_the_key_unmarked(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store()

    def boom() -> None:
        raise RuntimeError("crash before the effect was done")

    with pytest.raises(RuntimeError):
        store.once("k", boom)
    assert not store.seen("k")  # the next delivery tries again
    assert store.once("k", lambda: None)
    store.forget("k")
    assert not store.seen("k")


def test_keys_expire_after_ttl(make_store) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    store = make_store(ttl=60.0, clock=clock)
    store.mark("order-1")
    clock.now += 59.0
    assert store.seen("order-1")
    clock.now += 2.0
    assert not store.seen("order-1")


def test_memory_store_is_a_bounded_lru() -> None:
    store = MemoryDedupStore(max_keys=1000)
    for i in range(5000):
        store.mark(str(i))
    assert len(store) == 1000  # never more than max_keys ...
    assert not store.seen("0") and not store.seen("3999")  # ... the oldest marks forgotten first
    assert all(store.seen(str(i)) for i in range(4000, 5000))


def test_key_function_and_idempotent_wrapper(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store(key=lambda m: str(m.headers["order"]))
    charged: list[int] = []
    charge = idempotent(lambda m: charged.append(int(m.headers["order"])), store)
    # two sends of order 7 (new message ids) and a redelivery of order 8 (same id)
    eight = Message(b"", headers={"order": 8})
    ran = [charge(m) for m in [Message(b"", headers={"order": 7}), eight, Message(b"", headers={"order": 7}), eight]]
    assert charged == [7, 8] and ran == [True, True, False, False]
    with pytest.raises(TypeError, match="str"):
        make_store(key=lambda m: 42).key_of(eight)


def test_sqlite_store_survives_reopening_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "seen.db"
    first = SQLiteDedupStore(path)
    first.mark("m-1")
    first.close()
    again = SQLiteDedupStore(path)
    assert again.seen("m-1") and not again.seen("m-2")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_store_purges_expired_keys(tmp_path: Path) -> None:
    clock = Clock()
    store = SQLiteDedupStore(tmp_path / "seen.db", ttl=10.0, purge_every=100, clock=clock)
    for i in range(100):
        store.mark(f"old-{i}")
    clock.now += 11.0
    for i in range(100):  # the 100th mark purges what expired
        store.mark(f"new-{i}")
    assert len(store) == 100


def _mark_range(store: SQLiteDedupStore, start: int, stop: int) -> int:
    ran = 0
    for i in range(start, stop):
        ran += store.once(f"key-{i}", lambda: None)
    return ran


def test_sqlite_store_is_shared_by_processes(tmp_path: Path) -> None:
    store = SQLiteDedupStore(tmp_path / "seen.db")
    assert pickle.loads(pickle.dumps(store)).path == store.path
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:  # four processes marking overlapping ranges at once
        ran = pool.starmap(_mark_range, [(store, 0, 600), (store, 400, 1000), (store, 0, 1000), (store, 900, 1200)])
    assert len(store) == 1200  # every key once in the file, no 'database is locked'
    assert 1200 <= sum(ran) <= 3400  # concurrent first sights may both run: the documented window
    assert all(store.seen(f"key-{i}") for i in range(1200))
    assert not any(store.once(f"key-{i}", lambda: None) for i in range(1200))  # afterwards: all seen


def test_memory_store_refuses_to_cross_processes() -> None:
    with pytest.raises(TypeError, match="SQLiteDedupStore"):
        pickle.dumps(MemoryDedupStore())


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryDedupStore(max_keys=0)
    with pytest.raises(ValueError, match="ttl"):
        MemoryDedupStore(ttl=-1)
    with pytest.raises(ValueError, match="ttl"):
        SQLiteDedupStore(tmp_path / "x.db", ttl=float("nan"))
    with pytest.raises(TypeError, match="path"):
        SQLiteDedupStore(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="key"):
        MemoryDedupStore(key="id")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DedupStore"):
        idempotent(print, {})  # type: ignore[arg-type]
