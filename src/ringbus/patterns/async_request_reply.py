"""Asynchronous request-reply: accept a job at once, run it on a queue of workers, report its status until done.

Three parts, each with its own Bus connections, so they may live in one
process or in many:

- :class:`JobManager` (the server side, behind the HTTP app of
  :mod:`ringbus.http`) records each job in a :class:`JobStore` (SQLite) and
  sends it to the job queue; it answers the workers' control requests (may
  this job start? progress; is it cancelled?), applies the outcomes they send
  to the status queue, fails jobs whose message was dead-lettered (a worker
  died on every attempt), and delivers webhooks.
- :class:`JobWorker` consumes the job queue and runs ``handler(job, progress)``.
- The store is written only by the manager: workers need nothing but the bus.

Bus names for ``queue="jobs"``: the job queue ``jobs`` (dead letters in
``jobs.dlq``), the status queue ``jobs.status`` and the control service
``jobs.control``. Delivery is at least once: a worker that dies mid-job leaves
its message unacked, the bus delivers it again and the job's ``attempts``
counts it; the first outcome recorded wins.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

from ringbus.bus import Bus, check_name, connect
from ringbus.errors import Closed, Empty, NotFound, PeerGone, RingbusError
from ringbus.message import Message, new_id
from ringbus.patterns._handling import send_deduplicated
from ringbus.patterns._jobstore import STATUSES, TERMINAL, JobRecord, JobStore
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter
from ringbus.patterns.webhooks import WebhookPolicy

__all__ = [
    "JobManager",
    "JobManagerStats",
    "JobWorker",
    "JobWorkerStats",
    "Job",
    "JobCancelled",
    "JobRecord",
    "JobStore",
    "STATUSES",
    "TERMINAL",
]

log = logging.getLogger("ringbus.async_request_reply")

JOB_HEADER = "ringbus-job"  # on job, status and dead-letter messages: the job id
STATUS_HEADER = "ringbus-job-status"
TYPE_HEADER = "ringbus-job-type"
ERROR_HEADER = "ringbus-job-error"
ATTEMPT_HEADER = "ringbus-job-attempt"

POLL = 0.25  # seconds a loop waits for a message before it looks at stop again
PURGE_EVERY = 60.0
MAX_NOTE = 500  # characters of a progress message kept
JSON_TYPE = "application/json"
BYTES_TYPE = "application/octet-stream"

T = TypeVar("T")


class JobCancelled(RingbusError):
    """Raised by ``progress()`` in a handler whose job the client cancelled: stop and clean up."""


def _check_positive(name: str, value: object, *, integer: bool = False, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise ValueError(f"{name} must be a {'positive int' if integer else 'number > 0'}, got {value!r}")
    return value


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


# --- the server side --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobManagerStats(PatternStats):
    """:class:`PatternStats` of the server side (processed = jobs finished) plus the store's counts."""

    submitted: int  # jobs accepted by this manager
    cancelled: int  # jobs cancelled through this manager
    jobs: dict[str, int]  # jobs in the store per status, and webhooks per delivery state (webhook_<state>)
    webhooks_delivered: int
    webhooks_failed: int  # deliveries given up after max_attempts


class _ManagerCounter(StatsCounter):
    def __init__(self) -> None:
        super().__init__()
        self.submitted = self.cancelled = self.webhooks_delivered = self.webhooks_failed = 0


class _WorkerCounter(StatsCounter):
    def __init__(self) -> None:
        super().__init__()
        self.skipped = self.cancelled = self.crashed = 0


class JobManager:
    """The server side of asynchronous request-reply; see the module docstring.

    Parameters
    ----------
    url : str
        The bus (``memory://name`` when the workers are threads of this process, the broker otherwise).
    queue : str
        The job queue; the status queue, control service and dead-letter queue are named after it.
    store : JobStore, str, os.PathLike or None
        The job store, or the path of its SQLite file; None keeps jobs in memory (gone when the process ends).
    webhooks : WebhookPolicy or None
        Where webhooks may go and their secret; None refuses jobs that ask for one.
    max_attempts : int
        Deliveries of a job before it fails for good (a worker that dies mid-job costs one).
    visibility_timeout : float
        Seconds a worker may hold a job before it is delivered to another: above your longest job.
    max_queued : int
        Jobs waiting in the queue before :meth:`submit` raises :class:`ringbus.Full` (HTTP 503).
    retention : float
        Seconds a finished job (and its result) stays in the store.
    clock : callable
        Unix seconds (``time.time``); tests pass their own.
    """

    def __init__(self, url: str, *, queue: str = "jobs", store: JobStore | str | os.PathLike[str] | None = None,
                 webhooks: WebhookPolicy | None = None, max_attempts: int = 3, visibility_timeout: float = 300.0,
                 max_queued: int = 10_000, retention: float = 86_400.0, webhook_threads: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        self.url = url
        self.queue = check_name("queue", queue)
        self.status_queue = check_name("queue", f"{queue}.status")
        self.control_service = check_name("service", f"{queue}.control")
        self.dead_letter = check_name("queue", f"{queue}.dlq")
        if webhooks is not None and not isinstance(webhooks, WebhookPolicy):
            raise TypeError(f"webhooks must be a WebhookPolicy or None, not {type(webhooks).__name__}")
        self.webhooks = webhooks
        self.max_attempts = _check_positive("max_attempts", max_attempts, integer=True)
        self.visibility_timeout = _check_positive("visibility_timeout", visibility_timeout)
        self.max_queued = _check_positive("max_queued", max_queued, integer=True)
        self.retention = _check_positive("retention", retention)
        self.webhook_threads = _check_positive("webhook_threads", webhook_threads, integer=True)
        if not callable(clock):
            raise TypeError("clock must be callable")
        self._clock = clock
        self._own_store = not isinstance(store, JobStore)
        self.store = store if isinstance(store, JobStore) else JobStore(store)
        self._stop = threading.Event()
        self._hook_wake = threading.Event()
        self._hook_lock = threading.Lock()
        self._hook_busy = 0  # webhook deliveries in progress
        self._threads: list[threading.Thread] = []
        self._sender: ThreadPoolExecutor | None = None
        self._sender_bus: Bus | None = None
        self._listeners: list[Callable[[JobRecord], None]] = []
        self._listeners_lock = threading.Lock()
        self._counter = _ManagerCounter()
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<JobManager {self.url!r} queue={self.queue!r} {self.store!r}>"

    # -- lifetime ---------------------------------------------------------------------------------------------
    def start(self) -> JobManager:
        """Declare the queues and start the threads (control service, status and dead-letter consumers,
        webhooks); idempotent."""
        if self._closed:
            raise Closed("JobManager is closed")
        if self._started:
            return self
        self._sender = ThreadPoolExecutor(1, thread_name_prefix="ringbus-jobs-send")
        try:
            self._on_bus(self._declare)
        except BaseException:
            self._sender.submit(self._close_sender_bus)
            self._sender.shutdown(wait=True)
            self._sender = None
            raise
        self._started = True
        loops = [("control", self._control_loop), ("status", self._status_loop), ("dead", self._dead_loop)]
        if self.webhooks is not None:
            loops.append(("webhooks", self._webhook_loop))
        for name, target in loops:
            thread = threading.Thread(target=self._run_loop, args=(name, target), name=f"ringbus-jobs-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the threads (a webhook being delivered finishes) and close the bus connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._hook_wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._sender is not None:
            self._sender.submit(self._close_sender_bus).result(timeout)
            self._sender.shutdown(wait=True)
        if self._own_store:
            self.store.close()

    def __enter__(self) -> JobManager:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one connection that sends (a broker connection belongs to one thread) ----------------------------
    def _on_bus(self, fn: Callable[[Bus], T], timeout: float = 30.0) -> T:
        if self._sender is None:
            raise RingbusError("JobManager is not started; call start() first")

        def call() -> T:
            if self._sender_bus is None:
                self._sender_bus = connect(self.url)
            try:
                return fn(self._sender_bus)
            except (PeerGone, Closed):
                self._close_sender_bus()  # a broken connection: the next call opens a new one
                raise

        try:
            return self._sender.submit(call).result(timeout)
        except FuturesTimeout:
            raise PeerGone(f"the bus at {self.url!r} did not take the request within {timeout} s") from None

    def _close_sender_bus(self) -> None:
        if self._sender_bus is not None:
            bus, self._sender_bus = self._sender_bus, None
            try:
                bus.close()
            except Exception:  # closing a broken connection may fail too; it is gone either way
                log.debug("closing the sender bus failed", exc_info=True)

    def _declare(self, bus: Bus) -> None:
        bus.declare_queue(self.queue, durable=True, max_length=self.max_queued, overflow="reject",
                          max_attempts=self.max_attempts, visibility_timeout=self.visibility_timeout)
        bus.declare_queue(self.status_queue, durable=True, max_attempts=10, visibility_timeout=60.0)

    # -- what the HTTP app calls ------------------------------------------------------------------------------
    def submit(self, input: Any = None, *, callback_url: str | None = None, priority: int | None = None,
               tenant: str | None = None) -> JobRecord:
        """Record a job and put it on the queue; return its record (status ``queued``).

        ``tenant`` records who submitted it (the HTTP app, with ``tokens``, shows a job only to its tenant).

        Raises
        ------
        TypeError
            If ``input`` is not JSON-serializable, or ``priority`` not an int.
        ValueError
            If ``callback_url`` is refused (scheme, address) or no webhook secret is configured.
        ringbus.Full
            If ``max_queued`` jobs are waiting.
        """
        if not self._started or self._closed:
            raise Closed("JobManager is not running")
        try:
            body = json.dumps(input, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"input must be JSON-serializable: {exc}") from None
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            raise TypeError(f"priority must be an int or None, not {type(priority).__name__}")
        if callback_url is not None:
            if self.webhooks is None or self.webhooks.secret is None:
                raise ValueError("callback_url given but this server has no webhook secret configured")
            callback_url = self.webhooks.validate(callback_url)
        job_id = new_id()
        if tenant is not None and not isinstance(tenant, str):
            raise TypeError(f"tenant must be a str or None, not {type(tenant).__name__}")
        record = self.store.create(job_id, callback_url, self._clock(), tenant)
        try:
            self._on_bus(lambda bus: send_deduplicated(bus, self.queue, body, job_id, priority=priority,
                                                       headers={JOB_HEADER: job_id}))
        except BaseException:
            self.store.remove(job_id)
            raise
        self._counter.add(submitted=1)
        self._changed(record)
        log.debug("job %s queued", job_id)
        return record

    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or None if unknown (or purged)."""
        return self.store.get(job_id)

    def result(self, job_id: str) -> tuple[bytes, str] | None:
        """The result body and its content type, if the job succeeded."""
        return self.store.result(job_id)

    def cancel(self, job_id: str) -> tuple[str, JobRecord | None]:
        """Cancel a job: ``("cancelled", record)`` for a queued one (it will never run), ``("requested", record)``
        for a running one (its handler is told at its next progress report), ``("terminal", record)`` if it
        had finished, ``("unknown", None)``."""
        outcome, record = self.store.cancel(job_id, self._clock())
        if outcome in ("cancelled", "requested"):
            if outcome == "cancelled":
                self._counter.add(cancelled=1)
            self._changed(record)
        return outcome, record

    def add_listener(self, listener: Callable[[JobRecord], None]) -> None:
        """Call ``listener(record)`` (from a manager thread) after each change this manager makes to a job."""
        with self._listeners_lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[JobRecord], None]) -> None:
        with self._listeners_lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _changed(self, record: JobRecord | None) -> None:
        if record is None:
            return
        if record.hook_state == "pending":
            self._hook_wake.set()
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(record)
            except Exception:  # a listener's bug must not stop job bookkeeping
                log.exception("job listener %r failed", listener)

    def stats(self) -> JobManagerStats:
        base = self._counter.snapshot()
        try:
            counts = self._last_counts = self.store.counts()
        except ValueError:  # the store closed with the manager: the counts read last
            counts = getattr(self, "_last_counts", {})
        return JobManagerStats(base.processed, base.failed, base.retried, base.dead_lettered,
                               counts.get("running", 0), base.rate, self._counter.submitted, self._counter.cancelled,
                               counts, self._counter.webhooks_delivered, self._counter.webhooks_failed)

    # -- the loops --------------------------------------------------------------------------------------------
    def _run_loop(self, name: str, target: Callable[[Bus], None]) -> None:
        """Run ``target`` with a bus of its own until stop; a lost connection is reopened after a pause."""
        failures = 0
        while not self._stop.is_set():
            try:
                with connect(self.url) as bus:
                    target(bus)
                return
            except Exception as exc:  # a broker restart, a bug in one message: log, pause, go on
                failures += 1
                log.warning("job %s loop failed (%s); again in a moment", name, _error_text(exc))
                self._stop.wait(min(5.0, 0.2 * 2 ** min(failures, 5)))

    def _control_loop(self, bus: Bus) -> None:
        bus.serve(self.control_service, self._on_control, stop=self._stop)

    def _on_control(self, message: Message) -> bytes:
        request = json.loads(bytes(message.body))
        op, job_id = request.get("op"), request.get("job")
        if not isinstance(job_id, str):
            raise ValueError(f"control request without a job id: {request!r}")
        now = self._clock()
        if op == "start":
            attempt = int(request.get("attempt", 1))
            run, record = self.store.start(job_id, attempt, now)
            if run and attempt > 1:
                self._counter.add(retried=1)
            reply: dict[str, Any] = {"run": run, "status": None if record is None else record.status,
                                     "max_attempts": self.max_attempts}
        elif op == "progress":
            note = request.get("message")
            record = self.store.progress(job_id, float(request["done"]),
                                         None if note is None else str(note)[:MAX_NOTE], now)
            reply = {"cancel": record is None or record.cancel_requested or record.terminal}
        elif op == "retry":
            record = self.store.requeue(job_id, str(request.get("error"))[:2000], now)
            self._counter.add(failed=1)
            reply = {"ok": True}
        else:
            raise ValueError(f"unknown control op {op!r}")
        self._changed(record)
        return json.dumps(reply).encode()

    def _status_loop(self, bus: Bus) -> None:
        while not self._stop.is_set():
            message = bus.receive(self.status_queue, timeout=POLL)
            if message is None:
                continue
            headers = message.headers
            job_id, status = headers.get(JOB_HEADER), headers.get(STATUS_HEADER)
            if not isinstance(job_id, str) or status not in TERMINAL:
                log.warning("status message %s without a job id or outcome: dropped", message.id)
                message.ack()
                continue
            result = bytes(message.body) if status == "succeeded" else None
            error = headers.get(ERROR_HEADER)
            attempt = headers.get(ATTEMPT_HEADER)
            # the result's content type: a str the worker set, or absent
            changed, record = self.store.finish(job_id, str(status), result, headers.get(TYPE_HEADER),  # type: ignore[arg-type]
                                                None if error is None else str(error), self._clock(),
                                                attempt if isinstance(attempt, int) else 0)
            message.ack()
            if changed:
                self._counter.add(processed=1, failed=int(status == "failed"))
                self._changed(record)
            else:
                log.info("job %s: outcome %s of attempt %s ignored (already %s)", job_id, status, attempt,
                         record.status if record else "unknown")

    def _dead_loop(self, bus: Bus) -> None:
        purged_at = 0.0
        while not self._stop.is_set():
            now = self._clock()
            if now - purged_at >= PURGE_EVERY:
                purged_at = now
                purged = self.store.purge(now - self.retention)
                if purged:
                    log.info("purged %d finished job(s) older than %g s", purged, self.retention)
            message = bus.receive(self.dead_letter, timeout=POLL)
            if message is None:
                continue
            job_id = message.headers.get(JOB_HEADER)
            reason = message.headers.get("ringbus-dead-reason")
            if isinstance(job_id, str):
                attempts = self.max_attempts if reason == "max_attempts" else 0
                changed, record = self.store.finish(
                    job_id, "failed", None, None,
                    f"gave up: the job message was dead-lettered ({reason}) after {self.max_attempts} deliveries "
                    "without an outcome (its workers died or never settled it)" if reason == "max_attempts" else
                    f"gave up: the job message was dead-lettered ({reason})", self._clock(), attempts)
                if changed:
                    self._counter.add(processed=1, failed=1, dead_lettered=1)
                    self._changed(record)
            message.ack()

    def _webhook_loop(self, bus: Bus) -> None:
        import httpx  # the "http" extra; only needed when webhooks are on

        policy = self.webhooks
        assert policy is not None
        lease = policy.timeout * 2 + 5.0  # a claimed delivery is not due again before it must have ended
        with httpx.Client(follow_redirects=False, trust_env=False) as client, \
                ThreadPoolExecutor(self.webhook_threads, thread_name_prefix="ringbus-webhook") as pool:
            while not self._stop.is_set():
                self._hook_wake.clear()
                with self._hook_lock:
                    free = self.webhook_threads - self._hook_busy
                if free <= 0:  # every delivery thread is busy: one finishing wakes us
                    self._hook_wake.wait(1.0)
                    continue
                claimed = self.store.claim_webhooks(self._clock(), free, lease)
                if claimed:
                    with self._hook_lock:
                        self._hook_busy += len(claimed)
                    for record in claimed:
                        pool.submit(self._deliver, client, record)
                    continue
                next_at = self.store.next_webhook_at()
                self._hook_wake.wait(1.0 if next_at is None else min(1.0, max(0.01, next_at - self._clock())))

    def _deliver(self, client: Any, record: JobRecord) -> None:
        policy = self.webhooks
        assert policy is not None
        try:
            current = self.store.get(record.id) or record
            doc = current.as_dict()
            doc.pop("webhook", None)  # its delivery state would be stale by the time the receiver reads it
            result = self.store.result(record.id) if current.result_type == JSON_TYPE else None
            if result is not None and len(result[0]) <= policy.max_inline_result:
                doc["result"] = json.loads(result[0])
            body = json.dumps(doc, separators=(",", ":")).encode()
            attempt = record.hook_attempts + 1
            error = policy.deliver(client, record.callback_url or "", body, job_id=record.id, attempt=attempt)
            now = self._clock()
            if error is None:
                self._counter.add(webhooks_delivered=1)
                updated = self.store.webhook_attempted(record.id, delivered=True, next_at=None, error=None, now=now)
                log.info("webhook of job %s delivered (attempt %d)", record.id, attempt)
            elif attempt >= policy.max_attempts:
                self._counter.add(webhooks_failed=1)
                updated = self.store.webhook_attempted(record.id, delivered=False, next_at=None, error=error, now=now)
                log.warning("webhook of job %s given up after %d attempts: %s", record.id, attempt, error)
            else:
                delay = policy.retry.delay(attempt)
                updated = self.store.webhook_attempted(record.id, delivered=False, next_at=now + delay, error=error,
                                                       now=now)
                log.info("webhook of job %s failed (attempt %d: %s); again in %.2f s", record.id, attempt, error,
                         delay)
            self._changed(updated)
        except Exception:  # never lose the slot: the lease brings the webhook back
            log.exception("webhook delivery of job %s failed unexpectedly", record.id)
        finally:
            with self._hook_lock:
                self._hook_busy -= 1
            self._hook_wake.set()


# --- the worker side --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class JobWorkerStats(PatternStats):
    """:class:`PatternStats` of a worker (processed = jobs it ran to an outcome) plus what it skipped."""

    skipped: int  # job messages not run: cancelled while queued, or finished already
    cancelled: int  # jobs stopped by a cancel request at a progress report
    crashed: int  # worker threads that died in a handler (their job goes back to the queue)


class Job:
    """What a handler receives: the job's id, its input, and which attempt this is.

    ``progress(done, message=None)`` (also passed to the handler as its second argument) reports how far it
    is, ``done`` from 0.0 to 1.0; it raises :class:`JobCancelled` once the client cancelled the job. Call it
    from the handler's own thread.
    """

    def __init__(self, worker: JobWorker, bus: Bus, job_id: str, input: Any, attempt: int) -> None:
        self.id = job_id
        self.input = input
        self.attempt = attempt  # 1 on the first delivery; more after a worker died or a retry
        self._worker = worker
        self._bus = bus
        self._thread = threading.get_ident()
        self._cancelled = False
        self._last_report = -float("inf")

    def __repr__(self) -> str:
        return f"<Job {self.id} attempt {self.attempt}>"

    @property
    def cancelled(self) -> bool:
        """True once a progress report learned that the client cancelled the job."""
        return self._cancelled

    def progress(self, done: float, message: str | None = None) -> None:
        """Report that ``done`` (0.0 to 1.0) of the job is done, with an optional ``message``.

        A report within ``progress_interval`` of the previous one is not sent (except ``done=1.0``).

        Raises
        ------
        JobCancelled
            If the client cancelled the job: stop, clean up, and let it propagate.
        """
        if isinstance(done, bool) or not isinstance(done, (int, float)) or not 0.0 <= done <= 1.0:
            raise ValueError(f"done must be a number from 0.0 to 1.0, got {done!r}")
        if message is not None and not isinstance(message, str):
            raise TypeError(f"message must be a str or None, not {type(message).__name__}")
        if threading.get_ident() != self._thread:
            raise RingbusError("progress() must be called from the handler's thread (it uses the worker's bus)")
        now = self._worker._monotonic()
        if now - self._last_report >= self._worker.progress_interval or done >= 1.0:
            self._last_report = now
            reply = self._worker._control(self._bus, {"op": "progress", "job": self.id, "done": float(done),
                                                      "message": message}, persistent=False)
            if reply is not None and reply.get("cancel"):
                self._cancelled = True
        if self._cancelled:
            raise JobCancelled(f"job {self.id} was cancelled")


Handler = Callable[[Job, Callable[..., None]], Any]


class JobWorker:
    """Runs ``handler(job, progress)`` for each job of the queue, on ``threads`` threads (each with its own bus).

    The handler returns the result: bytes-like (served as ``application/octet-stream``) or any
    JSON-serializable value (``application/json``). Raising fails the job with the error's text, unless
    ``retries`` allows another attempt (after ``retry``'s backoff); raising :class:`JobCancelled` (what
    ``progress`` does once the job is cancelled) records it as cancelled. A thread that dies in a handler
    (``BaseException``, a killed process) leaves the job unsettled; the bus delivers it again.

    Parameters
    ----------
    url : str
        The bus the :class:`JobManager` uses.
    handler : callable
        ``handler(job, progress) -> result``.
    queue : str
        The job queue (the manager declares it; a worker started first waits for it).
    threads : int
        Jobs run at once by this worker.
    retries : int
        Extra attempts after a handler raised (never more than the manager's ``max_attempts`` allows).
    retry : RetryPolicy
        Backoff before such a retry.
    progress_interval : float
        Seconds between two progress reports sent to the server (reports in between are skipped, except the
        final ``done=1.0``); each report is a round trip.
    control_timeout : float
        Seconds to wait for the server to answer a control request.
    max_result : int
        Largest result in bytes; a bigger one fails the job.
    """

    def __init__(self, url: str, handler: Handler, *, queue: str = "jobs", threads: int = 1, retries: int = 0,
                 retry: RetryPolicy | None = None, progress_interval: float = 0.1, control_timeout: float = 5.0,
                 max_result: int = 16 * 1024 * 1024, name: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self.url = url
        self.handler = handler
        self.queue = check_name("queue", queue)
        self.status_queue = f"{queue}.status"
        self.control_service = f"{queue}.control"
        self.threads = _check_positive("threads", threads, integer=True)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        self.retries = retries
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
        self.retry = retry or RetryPolicy()
        if isinstance(progress_interval, bool) or not isinstance(progress_interval, (int, float)) \
                or progress_interval < 0:
            raise ValueError(f"progress_interval must be a number of seconds >= 0, got {progress_interval!r}")
        self.progress_interval = float(progress_interval)
        self.control_timeout = _check_positive("control_timeout", control_timeout)
        self.max_result = _check_positive("max_result", max_result, integer=True)
        self.name = name or f"worker-{new_id()[:8]}"
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counter = _WorkerCounter()

    def __repr__(self) -> str:
        return f"<JobWorker {self.name} {self.url!r} queue={self.queue!r} threads={self.threads}>"

    def start(self) -> JobWorker:
        """Start the worker threads; returns at once."""
        if self._threads:
            return self
        self._stop.clear()
        for i in range(self.threads):
            thread = threading.Thread(target=self._thread_main, name=f"ringbus-{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; the jobs in hand finish (within ``timeout``) and are settled."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def run(self, stop: threading.Event | None = None) -> None:
        """Serve in the calling thread (a worker process's main loop) until ``stop`` is set."""
        self._serve(stop or self._stop)

    def __enter__(self) -> JobWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> int:
        """Worker threads running now."""
        return sum(t.is_alive() for t in self._threads)

    def stats(self) -> JobWorkerStats:
        base = self._counter.snapshot()
        c = self._counter
        return JobWorkerStats(base.processed, base.failed, base.retried, base.dead_lettered, base.in_flight,
                              base.rate, c.skipped, c.cancelled, c.crashed)

    def _thread_main(self) -> None:
        try:
            self._serve(self._stop)
        except BaseException as exc:  # noqa: B036 - a dying thread: its bus is closed, its job goes back
            self._counter.add(crashed=1)
            log.error("%s: a worker thread died (%s); its job goes back to the queue", self.name, _error_text(exc))

    def _serve(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                with connect(self.url) as bus:  # closing it gives back a job in hand, whatever ends the loop
                    self._consume(bus, stop)
                return
            except Exception as exc:  # a lost connection (broker restart): reconnect after a pause
                failures += 1
                delay = self.retry.delay(failures)
                log.warning("%s: bus connection failed (%s); reconnecting in %.2f s", self.name, _error_text(exc),
                            delay)
                stop.wait(delay)

    def _consume(self, bus: Bus, stop: threading.Event) -> None:
        waiting_logged = False
        while not stop.is_set():
            try:
                message = bus.receive(self.queue, timeout=POLL)
            except NotFound:
                if not waiting_logged:
                    log.info("%s: queue %r not declared yet; waiting for the job server", self.name, self.queue)
                    waiting_logged = True
                stop.wait(POLL * 4)
                continue
            if message is not None:
                self._handle(bus, message, stop)

    def _control(self, bus: Bus, request: dict[str, Any], *, persistent: bool = True,
                 stop: threading.Event | None = None) -> dict[str, Any] | None:
        """Ask the server; None if it did not answer (after retrying with backoff while ``persistent``)."""
        failures = 0
        body = json.dumps(request).encode()
        while True:
            try:
                reply = bus.request(self.control_service, body, timeout=self.control_timeout)
                answer: dict[str, Any] | None = json.loads(bytes(reply.body))
                return answer
            except (Empty, RingbusError) as exc:
                failures += 1
                if not persistent or (stop is not None and stop.is_set()) or isinstance(exc, Closed):
                    log.warning("%s: control request %s for job %s not answered: %s", self.name, request["op"],
                                request["job"], exc)
                    return None
                delay = self.retry.delay(failures)
                log.warning("%s: job server not answering (%s); asking again in %.2f s", self.name, exc, delay)
                (stop or self._stop).wait(delay)

    def _handle(self, bus: Bus, message: Message, stop: threading.Event) -> None:
        job_id = message.headers.get(JOB_HEADER)
        if not isinstance(job_id, str):
            log.error("%s: message %s on %r has no %s header: dead-lettered", self.name, message.id, self.queue,
                      JOB_HEADER)
            message.reject()
            return
        attempt = message.attempts + 1
        reply = self._control(bus, {"op": "start", "job": job_id, "attempt": attempt}, stop=stop)
        if reply is None:  # stopping while the server is away: give the job back
            message.nack(requeue=True)
            return
        if not reply.get("run"):
            log.info("%s: job %s not run (%s)", self.name, job_id, reply.get("status") or "unknown to the server")
            self._counter.add(skipped=1)
            message.ack()
            return
        max_attempts = int(reply.get("max_attempts") or 1)
        self._counter.add(in_flight=1)
        try:
            outcome = self._run(bus, message, job_id, attempt, max_attempts)
        finally:
            self._counter.add(in_flight=-1)
        if outcome is None:  # sent back for a retry
            return
        status, body, content_type, error = outcome
        headers = {JOB_HEADER: job_id, STATUS_HEADER: status, TYPE_HEADER: content_type, ERROR_HEADER: error,
                   ATTEMPT_HEADER: attempt}
        try:
            send_deduplicated(bus, self.status_queue, body, f"{job_id}:{attempt}", headers=headers)
        except Exception as exc:  # the outcome did not reach the server: run the job again rather than lose it
            log.error("%s: outcome of job %s not sent (%s); job goes back to the queue", self.name, job_id, exc)
            message.nack(requeue=True, delay=self.retry.delay(attempt))
            return
        message.ack()
        self._counter.add(processed=1)

    def _run(self, bus: Bus, message: Message, job_id: str, attempt: int,
             max_attempts: int) -> tuple[str, bytes, str | None, str | None] | None:
        try:
            value = json.loads(bytes(message.body))
        except ValueError as exc:
            return "failed", b"", None, f"job input is not JSON: {exc}"
        job = Job(self, bus, job_id, value, attempt)
        try:
            result = self.handler(job, job.progress)
        except JobCancelled:
            self._counter.add(cancelled=1)
            log.info("%s: job %s cancelled", self.name, job_id)
            return "cancelled", b"", None, "cancelled by the client"
        except Exception as exc:
            self._counter.add(failed=1)
            error = _error_text(exc)
            if attempt <= self.retries and attempt < max_attempts:
                delay = self.retry.delay(attempt)
                log.warning("%s: job %s failed (%s); retry in %.2f s", self.name, job_id, error, delay)
                self._control(bus, {"op": "retry", "job": job_id, "error": error}, persistent=False)
                self._counter.add(retried=1)
                message.nack(requeue=True, delay=delay)
                return None
            log.warning("%s: job %s failed: %s", self.name, job_id, error)
            return "failed", b"", None, error
        if isinstance(result, (bytes, bytearray, memoryview)):
            body, content_type = bytes(result), BYTES_TYPE
        else:
            try:
                body, content_type = json.dumps(result, separators=(",", ":")).encode(), JSON_TYPE
            except (TypeError, ValueError) as exc:
                return "failed", b"", None, f"the handler's result is neither bytes nor JSON-serializable: {exc}"
        if len(body) > self.max_result:
            return "failed", b"", None, f"the result of {len(body)} bytes exceeds max_result={self.max_result}"
        return "succeeded", body, content_type, None
