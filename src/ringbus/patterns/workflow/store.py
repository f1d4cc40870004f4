"""The durable state of operations: the :class:`StateStore` protocol and its SQLite implementation.

The scheduler and the supervisor keep every operation as an :class:`OperationState` (its status, its steps, the
one task it waits for) and append an :class:`Event` for every change. A store only has to load and save whole
operations with a version check (compare-and-set), so that two writers - the scheduler handling a result, the
supervisor timing the same attempt out - never both win; the engine reloads and tries again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Active",
    "StepState",
    "OperationState",
    "Event",
    "StateStore",
    "SQLiteStateStore",
    "open_store",
    "FINISHED",
    "DEFAULT_STORE_FILE",
]

# Operation statuses: running -> completed | compensating -> compensated | compensation_failed.
FINISHED = frozenset(("completed", "compensated", "compensation_failed"))
DEFAULT_STORE_FILE = "workflows.sqlite3"


@dataclass
class Active:
    """The one task an operation waits for: a step's action or its compensation, at one attempt."""

    step: str
    kind: str  # "action" | "compensate"
    attempt: int
    state: str  # "scheduled": sent (perhaps delayed), no agent has it yet; "running": an agent said it started
    due_at: float  # when the task message becomes deliverable (after its backoff)
    deadline: float | None = None  # running: when the supervisor gives the attempt up (States.Timeout)


@dataclass
class StepState:
    """One step of one operation. ``status``: scheduled, running, completed, failed (for good), compensating,
    compensated, compensation_failed."""

    name: str
    status: str
    attempt: int = 0  # attempts of the action so far
    compensation_attempt: int = 0
    retries: list[int] = field(default_factory=list)  # retries used, per retry rule of the action
    compensation_retries: list[int] = field(default_factory=list)
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None  # the last failure: {"Error": name, "Cause": text}
    seq: int | None = None  # completion order within the operation (compensations run highest first)
    updated_at: float = 0.0


@dataclass
class OperationState:
    """One run of a workflow. ``status``: running, compensating, completed, compensated, compensation_failed."""

    id: str
    workflow: str
    status: str
    input: Any = None
    output: Any = None
    error: dict[str, Any] | None = None  # what failed for good (or was caught)
    caught: bool = False  # a Catch took a failure: the steps from there on are the recovery path
    active: Active | None = None
    seq: int = 0  # completion order of the next step to complete
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0
    steps: dict[str, StepState] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class Event:
    """One change of an operation, in the order they happened (``StateStore.history``)."""

    operation: str
    at: float
    step: str | None
    kind: str  # "operation", "action" or "compensate"
    attempt: int
    event: str  # started, scheduled, running, completed, failed, gave_up, caught, late_success, ...
    detail: str = ""


@runtime_checkable
class StateStore(Protocol):
    """Where operations live. Implement it to keep them elsewhere (PostgreSQL, ...); every method may be called
    from several threads, each on its own connection."""

    def create(self, operation: OperationState, events: list[Event]) -> bool:
        """Insert a new operation with its first events; False (and nothing written) if its id exists."""

    def load(self, operation_id: str) -> OperationState | None:
        """The operation, or None."""

    def save(self, operation: OperationState, events: list[Event]) -> bool:
        """Write the operation and append ``events`` in one transaction if its stored version is still
        ``operation.version`` (then increment ``operation.version``); False if another writer came first."""

    def scheduled(self) -> list[str]:
        """Ids of unfinished operations whose task is scheduled (sent, not started): resent after a crash."""

    def due(self, now: float) -> list[str]:
        """Ids of operations whose running task passed its deadline at ``now``."""

    def counts(self) -> dict[str, int]:
        """Operations by status."""

    def ids(self, status: str | None = None) -> list[str]:
        """Ids of the operations (with ``status``), oldest first."""

    def history(self, operation_id: str) -> list[Event]:
        """The events of one operation, oldest first."""

    def close(self) -> None:
        """Release connections; idempotent."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY, workflow TEXT NOT NULL, status TEXT NOT NULL, input TEXT, output TEXT, error TEXT,
    caught INTEGER NOT NULL DEFAULT 0, active_step TEXT, active_kind TEXT, active_attempt INTEGER,
    active_state TEXT, due_at REAL, deadline REAL, seq INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, version INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS operations_status ON operations (status);
CREATE INDEX IF NOT EXISTS operations_active ON operations (active_state, deadline);
CREATE TABLE IF NOT EXISTS steps (
    operation TEXT NOT NULL, step TEXT NOT NULL, status TEXT NOT NULL, attempt INTEGER NOT NULL,
    compensation_attempt INTEGER NOT NULL, retries TEXT NOT NULL, compensation_retries TEXT NOT NULL,
    input TEXT, output TEXT, error TEXT, seq INTEGER, updated_at REAL NOT NULL,
    PRIMARY KEY (operation, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, operation TEXT NOT NULL, at REAL NOT NULL, step TEXT, kind TEXT NOT NULL,
    attempt INTEGER NOT NULL, event TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_operation ON events (operation, id);
"""


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class SQLiteStateStore:
    """Operations in one SQLite file: WAL journal, one transaction per change, one connection per thread.

    Parameters
    ----------
    path : str or path
        The database file (created with its directory). ``sqlite:///path`` is accepted too.
    synchronous : {"NORMAL", "FULL"}
        ``NORMAL`` (default) keeps every committed change through a crash of any process (kill -9); ``FULL``
        also through a power cut or an OS crash, at an fsync per change.
    busy_timeout : float
        Seconds a writer waits for another process's transaction before failing.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL",
                 busy_timeout: float = 30.0) -> None:
        if isinstance(path, str) and path.startswith("sqlite://"):
            path = path[len("sqlite://"):]
        if not isinstance(path, (str, os.PathLike)) or not str(path) or str(path) == ":memory:":
            raise ValueError(f"path must be a database file path (several connections share it), got {path!r}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._connection().executescript(_SCHEMA)

    # -- connections --------------------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"state store {str(self.path)!r} is closed")
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            return db
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        self._local.db, self._local.pid = db, os.getpid()
        with self._lock:
            self._connections.append(db)
        return db

    class _Txn:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type: object, *exc: object) -> None:
            self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")

    def _transaction(self) -> SQLiteStateStore._Txn:
        return self._Txn(self._connection())

    # -- writes -------------------------------------------------------------------------------------------------
    def create(self, operation: OperationState, events: list[Event]) -> bool:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM operations WHERE id = ?", (operation.id,)).fetchone():
                return False
            db.execute("INSERT INTO operations (id, workflow, status, created_at, updated_at, version) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (operation.id, operation.workflow, operation.status,
                                                     operation.created_at, operation.updated_at, operation.version))
            self._write(db, operation, events)
        operation.version += 1
        return True

    def save(self, operation: OperationState, events: list[Event]) -> bool:
        with self._transaction() as db:
            row = db.execute("SELECT version FROM operations WHERE id = ?", (operation.id,)).fetchone()
            if row is None or row[0] != operation.version:
                return False
            self._write(db, operation, events)
        operation.version += 1
        return True

    @staticmethod
    def _write(db: sqlite3.Connection, op: OperationState, events: list[Event]) -> None:
        a = op.active
        db.execute(
            "UPDATE operations SET status = ?, input = ?, output = ?, error = ?, caught = ?, active_step = ?, "
            "active_kind = ?, active_attempt = ?, active_state = ?, due_at = ?, deadline = ?, seq = ?, "
            "updated_at = ?, version = ? WHERE id = ?",
            (op.status, _dump(op.input), _dump(op.output), _dump(op.error), int(op.caught),
             a and a.step, a and a.kind, a and a.attempt, a and a.state, a and a.due_at, a and a.deadline,
             op.seq, op.updated_at, op.version + 1, op.id))
        db.executemany(
            "INSERT OR REPLACE INTO steps (operation, step, status, attempt, compensation_attempt, retries, "
            "compensation_retries, input, output, error, seq, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(op.id, s.name, s.status, s.attempt, s.compensation_attempt, _dump(s.retries),
              _dump(s.compensation_retries), _dump(s.input), _dump(s.output), _dump(s.error), s.seq, s.updated_at)
             for s in op.steps.values()])
        db.executemany("INSERT INTO events (operation, at, step, kind, attempt, event, detail) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(e.operation, e.at, e.step, e.kind, e.attempt, e.event, e.detail) for e in events])

    # -- reads --------------------------------------------------------------------------------------------------
    def load(self, operation_id: str) -> OperationState | None:
        db = self._connection()
        db.execute("BEGIN")  # one snapshot for the operation and its steps
        try:
            row = db.execute(
                "SELECT id, workflow, status, input, output, error, caught, active_step, active_kind, "
                "active_attempt, active_state, due_at, deadline, seq, created_at, updated_at, version "
                "FROM operations WHERE id = ?", (operation_id,)).fetchone()
            if row is None:
                return None
            steps = db.execute(
                "SELECT step, status, attempt, compensation_attempt, retries, compensation_retries, input, output, "
                "error, seq, updated_at FROM steps WHERE operation = ? ORDER BY seq IS NULL, seq, updated_at",
                (operation_id,)).fetchall()
        finally:
            db.execute("COMMIT")
        (op_id, workflow, status, input_, output, error, caught, a_step, a_kind, a_attempt, a_state, due_at,
         deadline, seq, created_at, updated_at, version) = row
        active = None if a_step is None else Active(a_step, a_kind, a_attempt, a_state, due_at, deadline)
        op = OperationState(op_id, workflow, status, _load(input_), _load(output), _load(error), bool(caught),
                            active, seq, created_at, updated_at, version)
        for (name, s_status, attempt, c_attempt, retries, c_retries, s_input, s_output, s_error, s_seq,
             s_updated) in steps:
            op.steps[name] = StepState(name, s_status, attempt, c_attempt, _load(retries), _load(c_retries),
                                       _load(s_input), _load(s_output), _load(s_error), s_seq, s_updated)
        return op

    def scheduled(self) -> list[str]:
        rows = self._connection().execute(
            "SELECT id FROM operations WHERE active_state = 'scheduled' ORDER BY created_at").fetchall()
        return [r[0] for r in rows]

    def due(self, now: float) -> list[str]:
        rows = self._connection().execute(
            "SELECT id FROM operations WHERE active_state = 'running' AND deadline <= ? ORDER BY deadline",
            (now,)).fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._connection().execute("SELECT status, COUNT(*) FROM operations GROUP BY status").fetchall()
        return {status: n for status, n in rows}

    def ids(self, status: str | None = None) -> list[str]:
        db = self._connection()
        if status is None:
            rows = db.execute("SELECT id FROM operations ORDER BY created_at, id").fetchall()
        else:
            rows = db.execute("SELECT id FROM operations WHERE status = ? ORDER BY created_at, id",
                              (status,)).fetchall()
        return [r[0] for r in rows]

    def history(self, operation_id: str) -> list[Event]:
        rows = self._connection().execute(
            "SELECT operation, at, step, kind, attempt, event, detail FROM events WHERE operation = ? ORDER BY id",
            (operation_id,)).fetchall()
        return [Event(*row) for row in rows]

    def close(self) -> None:
        """Close every connection this store opened (in any thread of this process)."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for db in connections:
            try:
                db.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass

    def __enter__(self) -> SQLiteStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SQLiteStateStore {str(self.path)!r}>"


def open_store(store: StateStore | str | os.PathLike[str] | None,
               data_dir: str | os.PathLike[str] | None) -> StateStore:
    """``store`` if it is a StateStore; a SQLite store at the path (or ``sqlite:///path``) it names; by default
    ``<data_dir>/workflows.sqlite3`` (``data_dir`` defaults to ``./ringbus-data``, the broker's default too)."""
    if store is None:
        base = Path(data_dir) if data_dir is not None else Path.cwd() / "ringbus-data"
        return SQLiteStateStore(base / DEFAULT_STORE_FILE)
    if isinstance(store, (str, os.PathLike)):
        return SQLiteStateStore(store)
    if isinstance(store, StateStore):
        return store
    raise TypeError(f"store must be a StateStore, a path or None, not {type(store).__name__}")
