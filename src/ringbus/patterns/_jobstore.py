"""The job store of asynchronous request-reply: one SQLite table of job states, results and webhook deliveries.

Only the job server (:class:`ringbus.patterns.async_request_reply.JobManager`) opens it; workers change a
job's state through the Bus (the server's control service and status queue), so they need no access to this
file. Every change is one ``BEGIN IMMEDIATE`` transaction, so several server processes may share one file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["JobRecord", "JobStore", "STATUSES", "TERMINAL"]

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# hook_state: NULL (no callback), 'waiting' (job not finished), 'pending' (due at hook_next),
# 'delivered', 'failed' (attempts used up).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done REAL,
    note TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    updated REAL NOT NULL,
    error TEXT,
    result BLOB,
    result_type TEXT,
    callback_url TEXT,
    hook_state TEXT,
    hook_attempts INTEGER NOT NULL DEFAULT 0,
    hook_next REAL,
    hook_error TEXT,
    rev INTEGER NOT NULL DEFAULT 0,
    tenant TEXT
);
CREATE INDEX IF NOT EXISTS jobs_hook_due ON jobs (hook_state, hook_next);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
"""

_COLUMNS = ("id, status, attempts, done, note, cancel_requested, created, started, finished, updated, error, "
            "result_type, length(result), callback_url, hook_state, hook_attempts, hook_next, hook_error, rev, tenant")


@dataclass(frozen=True)
class JobRecord:
    """One job as the store holds it (the result itself is read with :meth:`JobStore.result`)."""

    id: str
    status: str  # queued, running, succeeded, failed, cancelled
    attempts: int  # deliveries to a worker so far (a job whose worker died is delivered again)
    done: float | None  # progress reported by the handler, 0.0 to 1.0
    note: str | None  # the message that came with the last progress report
    cancel_requested: bool
    created: float  # unix seconds
    started: float | None
    finished: float | None
    updated: float
    error: str | None
    result_type: str | None  # content type of the result, when it succeeded
    result_size: int | None
    callback_url: str | None
    hook_state: str | None  # None, waiting, pending, delivered, failed
    hook_attempts: int
    hook_next: float | None
    hook_error: str | None
    rev: int  # bumped on every change: server-sent events send a record once per rev
    tenant: str | None = None  # who submitted it, when the HTTP app maps bearer tokens to tenants

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def as_dict(self, base: str = "") -> dict[str, Any]:
        """The job's JSON document (``GET /jobs/{id}``, server-sent events, webhook bodies); links under ``base``."""
        href = f"{base}/jobs/{self.id}"
        links = {"self": href, "events": f"{href}/events"}
        if self.status == "succeeded":
            links["result"] = f"{href}/result"
        doc: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "attempts": self.attempts,
            "progress": None if self.done is None else {"done": self.done, "message": self.note},
            "cancel_requested": self.cancel_requested,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
            "result_type": self.result_type,
            "result_size": self.result_size,
            "links": links,
        }
        if self.callback_url is not None:
            doc["webhook"] = {"url": self.callback_url, "state": self.hook_state, "attempts": self.hook_attempts,
                              "error": self.hook_error}
        return doc


class JobStore:
    """Job states in SQLite: a file (WAL mode; survives restarts, shareable by server processes) or memory.

    Parameters
    ----------
    path : str, os.PathLike or None
        The database file (its directory is created); None keeps the jobs in this process's memory.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, a path or None, not {type(path).__name__}")
        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if self.path is None else str(self.path), timeout=10.0,
                                   isolation_level=None, check_same_thread=False)
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if "tenant" not in {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN tenant TEXT")  # a file made before tenants existed
        self._closed = False

    def __repr__(self) -> str:
        return f"<JobStore {str(self.path) if self.path else ':memory:'}>"

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        # One connection under a lock for the threads of this process; BEGIN IMMEDIATE takes the file's write
        # lock up front, so a read-then-write cannot interleave with another server process sharing the file.
        with self._lock:
            if self._closed:
                raise ValueError("the job store is closed")
            if not write:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _row(db: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _record(row)

    def create(self, job_id: str, callback_url: str | None, now: float, tenant: str | None = None) -> JobRecord:
        with self._tx() as db:
            db.execute("INSERT INTO jobs (id, status, created, updated, callback_url, hook_state, tenant) "
                       "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                       (job_id, now, now, callback_url, None if callback_url is None else "waiting", tenant))
            return self._row(db, job_id)  # type: ignore[return-value]  # the row this transaction wrote

    def remove(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def get(self, job_id: str) -> JobRecord | None:
        with self._tx(write=False) as db:
            return self._row(db, job_id)

    def result(self, job_id: str) -> tuple[bytes, str] | None:
        """The result body and content type of a job that succeeded; None otherwise."""
        with self._tx(write=False) as db:
            row = db.execute("SELECT result, result_type FROM jobs WHERE id = ? AND status = 'succeeded'",
                             (job_id,)).fetchone()
        return None if row is None or row[0] is None else (bytes(row[0]), row[1])

    def start(self, job_id: str, attempts: int, now: float) -> tuple[bool, JobRecord | None]:
        """A worker took the job's message: may it run the handler? Not when cancelled, finished or unknown."""
        with self._tx() as db:
            record = self._row(db, job_id)
            if record is None or record.terminal:
                return False, record
            if record.cancel_requested:  # asked to cancel while running, then its worker died
                return False, self._finish(db, record, "cancelled", None, None, None, now)
            db.execute("UPDATE jobs SET status = 'running', attempts = max(attempts, ?), started = ?, "
                       "updated = ?, rev = rev + 1 WHERE id = ?", (attempts, now, now, job_id))
            return True, self._row(db, job_id)

    def progress(self, job_id: str, done: float, note: str | None, now: float) -> JobRecord | None:
        with self._tx() as db:
            record = self._row(db, job_id)
            if record is None or record.status != "running":
                return record
            db.execute("UPDATE jobs SET done = ?, note = ?, updated = ?, rev = rev + 1 WHERE id = ?",
                       (done, note, now, job_id))
            return self._row(db, job_id)

    def requeue(self, job_id: str, error: str, now: float) -> JobRecord | None:
        """The handler failed and its worker sent the job back for another attempt."""
        with self._tx() as db:
            record = self._row(db, job_id)
            if record is None or record.status != "running":
                return record
            db.execute("UPDATE jobs SET status = 'queued', error = ?, updated = ?, rev = rev + 1 WHERE id = ?",
                       (error, now, job_id))
            return self._row(db, job_id)

    def finish(self, job_id: str, status: str, result: bytes | None, result_type: str | None,
               error: str | None, now: float, attempts: int = 0) -> tuple[bool, JobRecord | None]:
        """Record the outcome; the first terminal state wins. Returns (changed, record)."""
        if status not in TERMINAL:
            raise ValueError(f"status must be one of {sorted(TERMINAL)}, got {status!r}")
        with self._tx() as db:
            record = self._row(db, job_id)
            if record is None or record.terminal:
                return False, record
            if attempts > record.attempts:
                db.execute("UPDATE jobs SET attempts = ? WHERE id = ?", (attempts, job_id))
                record = self._row(db, job_id)
            # record is not None: the row was there above, in this transaction
            return True, self._finish(db, record, status, result, result_type, error, now)  # type: ignore[arg-type]

    def _finish(self, db: sqlite3.Connection, record: JobRecord, status: str, result: bytes | None,
                result_type: str | None, error: str | None, now: float) -> JobRecord:
        hook = None if record.callback_url is None else "pending"
        done = 1.0 if status == "succeeded" else record.done
        db.execute("UPDATE jobs SET status = ?, result = ?, result_type = ?, error = ?, finished = ?, updated = ?, "
                   "done = ?, hook_state = ?, hook_next = ?, rev = rev + 1 WHERE id = ?",
                   (status, result, result_type, error, now, now, done, hook, now if hook else None, record.id))
        return self._row(db, record.id)  # type: ignore[return-value]  # the row this transaction updated

    def cancel(self, job_id: str, now: float) -> tuple[str, JobRecord | None]:
        """Cancel: a queued job at once ("cancelled"), a running one by flag ("requested").

        Else "terminal" or "unknown".
        """
        with self._tx() as db:
            record = self._row(db, job_id)
            if record is None:
                return "unknown", None
            if record.terminal:
                return "terminal", record
            if record.status == "queued":
                return "cancelled", self._finish(db, record, "cancelled", None, None, "cancelled by the client", now)
            db.execute("UPDATE jobs SET cancel_requested = 1, updated = ?, rev = rev + 1 WHERE id = ?",
                       (now, job_id))
            return "requested", self._row(db, job_id)

    def claim_webhooks(self, now: float, limit: int, lease: float) -> list[JobRecord]:
        """Take up to ``limit`` due webhooks for delivery: each is not due again for ``lease`` seconds.

        The claim is one write transaction, so two servers sharing the file never deliver one webhook at
        once; a server that dies mid-delivery leaves the webhook to be retried when its lease runs out.
        """
        with self._tx() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE hook_state = 'pending' AND hook_next <= ? "
                              "ORDER BY hook_next LIMIT ?", (now, limit)).fetchall()
            db.executemany("UPDATE jobs SET hook_next = ? WHERE id = ?", [(now + lease, row[0]) for row in rows])
        return [_record(row) for row in rows]

    def next_webhook_at(self) -> float | None:
        """When the earliest pending webhook (or lease) is due; None if none is pending."""
        with self._tx(write=False) as db:
            row = db.execute("SELECT min(hook_next) FROM jobs WHERE hook_state = 'pending'").fetchone()
        return None if row is None else row[0]

    def webhook_attempted(self, job_id: str, *, delivered: bool, next_at: float | None, error: str | None,
                          now: float) -> JobRecord | None:
        """Record one delivery attempt: delivered, due again at ``next_at``, or given up (``next_at`` None)."""
        state = "delivered" if delivered else ("pending" if next_at is not None else "failed")
        with self._tx() as db:
            db.execute("UPDATE jobs SET hook_state = ?, hook_attempts = hook_attempts + 1, hook_next = ?, "
                       "hook_error = ?, updated = ?, rev = rev + 1 WHERE id = ?",
                       (state, next_at if state == "pending" else None, error, now, job_id))
            return self._row(db, job_id)

    def purge(self, finished_before: float) -> int:
        """Forget finished jobs (and their results) older than ``finished_before`` whose webhook is settled."""
        with self._tx() as db:
            cursor = db.execute("DELETE FROM jobs WHERE finished < ? AND (hook_state IS NULL OR hook_state IN "
                                "('delivered', 'failed'))", (finished_before,))
            return cursor.rowcount

    def counts(self) -> dict[str, int]:
        """Jobs per status, and webhooks per delivery state (keys ``webhook_<state>``)."""
        with self._tx(write=False) as db:
            counts = dict.fromkeys(STATUSES, 0)
            counts.update(db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())
            for state, n in db.execute("SELECT hook_state, count(*) FROM jobs WHERE hook_state IS NOT NULL "
                                       "GROUP BY hook_state").fetchall():
                counts[f"webhook_{state}"] = n
        return counts

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _record(row: tuple[Any, ...]) -> JobRecord:
    (job_id, status, attempts, done, note, cancel, created, started, finished, updated, error, result_type,
     result_size, callback_url, hook_state, hook_attempts, hook_next, hook_error, rev, tenant) = row
    return JobRecord(job_id, status, attempts, done, note, bool(cancel), created, started, finished, updated, error,
                     result_type, result_size, callback_url, hook_state, hook_attempts, hook_next, hook_error, rev,
                     tenant)
