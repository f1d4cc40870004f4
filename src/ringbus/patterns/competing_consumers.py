"""Competing consumers: a pool of workers - threads or processes, each with its own connection - sharing one queue.

Each message goes to one worker; acked after its handler returns, nacked with
exponential backoff and jitter when the handler raises, and sent to the
dead-letter queue with the error in its headers once it has used its
``max_attempts`` (see :class:`ringbus.patterns._handling.Dispatcher` for the
exact rules). Stopping is graceful: workers stop taking messages, finish and
ack the one in hand, and give back what they had prefetched without counting
an attempt. A worker process that dies is replaced; its unacked messages come
back to the queue (at most ``prefetch`` of them, which the idempotency store
of :mod:`ringbus.patterns.idempotency` can keep from running twice).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, Literal
from urllib.parse import urlsplit

from ringbus.bus import QueueOptions, check_name, connect
from ringbus.errors import NotFound, RingbusError
from ringbus.message import Message
from ringbus.patterns._handling import Dispatcher, Reject
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter
from ringbus.patterns.idempotency import DedupStore

__all__ = ["WorkerPool", "WorkerPoolStats", "Reject"]

log = logging.getLogger("ringbus.competing_consumers")

Mode = Literal["thread", "process"]

POLL = 0.25  # seconds a worker waits for a message before it looks at stop and pause again
MONITOR = 0.2  # seconds between two looks of the pool at its workers
FLAG_SLICE = 0.02  # seconds a waiting worker process sleeps between two looks at the stop and pause flags
_SPAWN = multiprocessing.get_context("spawn")
# Per-worker slots of the shared counters of a process pool.
_FIELDS = ("processed", "failed", "retried", "dead_lettered", "in_flight", "skipped", "ready")
_SLOT = {name: i for i, name in enumerate(_FIELDS)}
_STOP, _PAUSE = 0, 1  # flags of a process pool


@dataclass(frozen=True)
class WorkerPoolStats(PatternStats):
    """:class:`PatternStats` plus what a pool adds."""

    workers: int  # workers alive now
    restarted: int  # workers that died and were replaced
    skipped: int  # deliveries the idempotency store had seen: acked without running the handler


class _Counter(StatsCounter):
    def __init__(self) -> None:
        super().__init__()
        self.skipped = self.restarted = self.ready = 0


@dataclass(frozen=True)
class _Settings:
    """What every worker needs; picklable, so that a worker process receives it."""

    url: str
    queue: str
    prefetch: int
    retry: RetryPolicy
    max_attempts: int
    dead_letter: str
    idempotency: DedupStore | None


# --- the worker loop (threads and processes) --------------------------------------------------------------------

class _ThreadControl:
    """Stop and pause for worker threads."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.resumed = threading.Event()
        self.resumed.set()

    def stopping(self) -> bool:
        return self.stop.is_set()

    def paused(self) -> bool:
        return not self.resumed.is_set()

    def sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    def wait_resumed(self, seconds: float) -> None:
        self.resumed.wait(seconds)


class _ProcessControl:
    """Stop and pause for a worker process: the pool's shared flags, its own SIGTERM, or its parent gone.

    The flags are plain shared memory, read with a load per message (no lock: a multiprocessing.Event
    would take a semaphore shared by every worker on each look).
    """

    def __init__(self, flags: Any) -> None:
        self.flags = flags
        self.parent = os.getppid()
        self.terminated = False

    def stopping(self) -> bool:
        return self.terminated or bool(self.flags[_STOP]) or os.getppid() != self.parent

    def paused(self) -> bool:
        return bool(self.flags[_PAUSE])

    def sleep(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Sleep in slices, waking early when stopped (or when ``until()`` holds)."""
        deadline = time.monotonic() + seconds
        while not self.stopping() and not (until is not None and until()):
            left = deadline - time.monotonic()
            if left <= 0.0:
                return
            time.sleep(min(left, FLAG_SLICE))

    def wait_resumed(self, seconds: float) -> None:
        self.sleep(seconds, until=lambda: not self.paused())


def _work(settings: _Settings, handler: Callable[[Message], Any], control: Any, count: Callable[..., None]) -> None:
    """One worker: its own connection, one message at a time, until ``control`` says stop."""
    dispatch = Dispatcher(settings.queue, handler, retry=settings.retry, max_attempts=settings.max_attempts,
                          dead_letter=settings.dead_letter, count=count, idempotency=settings.idempotency, log=log)
    failures = 0
    ready = False
    while not control.stopping():
        try:
            with connect(settings.url) as bus:
                bus.queue_stats(settings.queue)  # the broker answers and the queue is there
                if not ready:
                    ready = True
                    count(ready=1)
                failures = 0
                while not control.stopping():
                    if control.paused():
                        control.wait_resumed(POLL)
                        continue
                    messages = bus.consume(settings.queue, prefetch=settings.prefetch, timeout=POLL)
                    try:
                        for message in messages:
                            dispatch(bus, message)
                            if control.stopping() or control.paused():
                                break
                    finally:
                        messages.close()  # what was prefetched and not handed out goes back, no attempt counted
        except Exception:  # noqa: BLE001 - the broker went away, say: reconnect with backoff
            if control.stopping():
                break
            failures += 1
            delay = settings.retry.delay(failures)
            log.exception("worker on %r failed; reconnecting in %.2f s", settings.queue, delay)
            control.sleep(delay)
    if ready:
        count(ready=-1)


class _SharedCount:
    """``count(**deltas)`` into one worker process's slots of the pool's shared counters."""

    def __init__(self, counts: Any, index: int) -> None:
        self.counts = counts
        self.base = index * len(_FIELDS)

    def __call__(self, **deltas: int) -> None:
        counts, base = self.counts, self.base
        for name, value in deltas.items():
            counts[base + _SLOT[name]] += value


def _process_main(settings: _Settings, handler: Callable[[Message], Any], flags: Any, counts: Any,
                  index: int) -> None:
    """Body of a worker process (spawned)."""
    control = _ProcessControl(flags)

    def on_term(signum: int, frame: Any) -> None:
        control.terminated = True

    signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C reaches the whole process group; the pool's process decides, and tells us through the flags.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _work(settings, handler, control, _SharedCount(counts, index))


# --- the pool ---------------------------------------------------------------------------------------------------

class _Worker:
    """A worker thread or process and its slot number."""

    def __init__(self, index: int, runner: threading.Thread | BaseProcess) -> None:
        self.index = index
        self.runner = runner

    def alive(self) -> bool:
        return bool(self.runner.is_alive())

    def crashed(self) -> bool:
        """Gone without being told to: a thread that raised, a process that exited non-zero (a kill, a crash)."""
        if self.runner.is_alive():
            return False
        return isinstance(self.runner, threading.Thread) or self.runner.exitcode not in (0, None)


class WorkerPool:
    """``workers`` competing consumers of ``queue``, each on its own connection to ``url``.

    Parameters
    ----------
    url : str
        The bus: ``memory://name`` (threads only) or a broker url (``tcp://``, ``ipc://``).
    queue : str
        The queue to consume.
    handler : callable
        ``handler(message)``; its return value is ignored. Raise to retry, :class:`Reject` to dead-letter at
        once. With ``mode="process"`` it must be picklable: a module-level function.
    workers : int
        How many consumers.
    mode : {"thread", "process"}
        Threads of this process, or processes (``spawn``; broker urls only). Processes for CPU-bound handlers.
    prefetch : int
        Messages each worker holds unacked at most (handled one at a time; the rest hide the round trip).
        Also the most a killed worker can leave to be handled twice. 1 for long tasks: fair dispatch.
    retry : RetryPolicy
        Delay before attempt n + 1 after n failures.
    max_attempts, dead_letter
        What the queue was declared with (``max_attempts`` default 5, ``dead_letter`` default
        ``<queue>.dlq``); taken from ``declare`` when given. The pool sends a message to the dead-letter
        queue itself on its last attempt, to put the error in its headers.
    idempotency : DedupStore or None
        Skip (ack without running the handler) messages whose key it has seen; marked after success.
        Processes need one that is ``shared_across_processes`` (:class:`SQLiteDedupStore`).
    declare : mapping or None
        ``declare_queue`` options: the pool declares the queue with them at :meth:`start`. None: the queue
        must exist.
    restart : bool
        Replace a worker that died (a killed process, a thread whose handler raised SystemExit).
    """

    def __init__(self, url: str, queue: str, handler: Callable[[Message], Any], *, workers: int = 4,
                 mode: Mode = "thread", prefetch: int = 16, retry: RetryPolicy | None = None,
                 max_attempts: int | None = None, dead_letter: str | None = None,
                 idempotency: DedupStore | None = None, declare: Mapping[str, Any] | None = None,
                 restart: bool = True) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str such as 'memory://jobs' or 'tcp://127.0.0.1:5555', not "
                            f"{type(url).__name__}")
        check_name("queue", queue)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        if idempotency is not None and not isinstance(idempotency, DedupStore):
            raise TypeError(f"idempotency must be a DedupStore or None, not {type(idempotency).__name__}")
        options = self._options(declare, max_attempts, dead_letter)
        if mode == "process":
            if urlsplit(url).scheme == "memory":
                raise ValueError(f"mode='process' needs a broker url (tcp:// or ipc://): {url!r} lives in one "
                                 "process; use mode='thread' with memory://")
            if idempotency is not None and not idempotency.shared_across_processes:
                raise ValueError(f"idempotency store {type(idempotency).__name__} lives in one process; worker "
                                 "processes need SQLiteDedupStore(path)")
            try:
                pickle.dumps(handler)
            except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing here
                raise TypeError(f"with mode='process' the handler must be picklable (a module-level function); "
                                f"{handler!r} is not: {exc}") from None
        self.url = url
        self.queue = queue
        self.handler = handler
        self.workers = workers
        self.mode = mode
        self.restart = restart
        self._declare = dict(declare) if declare is not None else None
        self._settings = _Settings(url, queue, prefetch, retry or RetryPolicy(), options.max_attempts,
                                   options.dead_letter_queue(queue), idempotency)
        self._counter = _Counter()
        self._slots: list[_Worker] = []
        self._started = False
        self._thread_control = _ThreadControl()
        self._flags: Any = None
        self._counts: Any = None
        if mode == "process":  # shared with the worker processes: stop and pause flags, per-worker counters
            self._flags = _SPAWN.RawArray("b", 2)
            self._counts = _SPAWN.RawArray("q", workers * len(_FIELDS))
        self._seen_counts = [0] * len(_FIELDS)
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._lock = threading.Lock()

    @staticmethod
    def _options(declare: Mapping[str, Any] | None, max_attempts: int | None,
                 dead_letter: str | None) -> QueueOptions:
        """The queue options the pool relies on, from ``declare`` or the two keyword arguments."""
        if declare is None:
            return QueueOptions(max_attempts=5 if max_attempts is None else max_attempts, dead_letter=dead_letter)
        if not isinstance(declare, Mapping):
            raise TypeError(f"declare must be a mapping of declare_queue options or None, not "
                            f"{type(declare).__name__}")
        try:
            options = QueueOptions(**declare)
        except TypeError as exc:
            raise TypeError(f"declare holds an option declare_queue does not take: {exc}") from None
        for name, given in (("max_attempts", max_attempts), ("dead_letter", dead_letter)):
            if given is not None and given != getattr(options, name):
                raise ValueError(f"{name}={given!r} differs from declare[{name!r}]={getattr(options, name)!r}; "
                                 "give it once, in declare")
        return options

    # -- lifetime -------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> WorkerPool:
        """Declare the queue (if ``declare`` was given), start the workers, return once each one is connected.

        After :meth:`pause` the workers start paused: connected, taking nothing until :meth:`resume`.

        Raises
        ------
        ringbus.NotFound
            If the queue does not exist and ``declare`` was not given.
        ringbus.RingbusError
            If the pool was started before, or the workers were not all consuming within ``timeout`` seconds
            (the pool is stopped again).
        """
        with self._lock:
            if self._started:
                raise RingbusError(f"worker pool of {self.queue!r} was started already; make a new one")
            self._started = True
        with connect(self.url) as bus:
            if self._declare is not None:
                bus.declare_queue(self.queue, **self._declare)
            else:
                try:
                    bus.queue_stats(self.queue)
                except NotFound:
                    raise NotFound(f"queue {self.queue!r} does not exist at {self.url}; declare it first, or pass "
                                   "declare={...} to the pool") from None
        for index in range(self.workers):
            self._slots.append(self._launch(index))
        self._monitor = threading.Thread(target=self._watch, name=f"ringbus-pool-{self.queue}", daemon=True)
        self._monitor.start()
        deadline = time.monotonic() + timeout
        while self._ready() < self.workers:
            if time.monotonic() > deadline:
                self.stop(timeout=5.0)
                raise RingbusError(f"{self.workers - self._ready()} of {self.workers} workers of {self.queue!r} "
                                   f"were not connected within {timeout:g} s (see the log for why)")
            time.sleep(0.01)
        log.info("%d %s workers consume %r at %s", self.workers, self.mode, self.queue, self.url)
        return self

    def _launch(self, index: int) -> _Worker:
        runner: threading.Thread | BaseProcess
        if self.mode == "thread":
            runner = threading.Thread(target=_work, name=f"ringbus-worker-{self.queue}-{index}", daemon=True,
                                      args=(self._settings, self.handler, self._thread_control, self._counter.add))
        else:
            runner = _SPAWN.Process(target=_process_main, name=f"ringbus-worker-{self.queue}-{index}", daemon=True,
                                    args=(self._settings, self.handler, self._flags, self._counts, index))
        runner.start()
        return _Worker(index, runner)

    def _ready(self) -> int:
        if self.mode == "thread":
            return self._counter.ready
        return sum(self._counts[i * len(_FIELDS) + _SLOT["ready"]] for i in range(self.workers))

    def _stopping(self) -> bool:
        return self._thread_control.stopping() if self.mode == "thread" else bool(self._flags[_STOP])

    def _watch(self) -> None:
        """Replace workers that died; fold the process workers' counters into the pool's."""
        while not self._monitor_stop.wait(MONITOR):
            if self.mode == "process":
                self._collect()
            if not self.restart:
                continue
            with self._lock:
                for i, worker in enumerate(self._slots):
                    if self._stopping() or not worker.crashed():
                        continue
                    code = getattr(worker.runner, "exitcode", None)
                    log.warning("worker %d of %r died%s; starting another", worker.index, self.queue,
                                "" if code is None else f" (exit code {code})")
                    if self.mode == "process":  # what the dead one held is back in the queue (or soon will be)
                        base = worker.index * len(_FIELDS)
                        for name in ("in_flight", "ready"):
                            self._counts[base + _SLOT[name]] = 0
                    self._slots[i] = self._launch(worker.index)
                    self._counter.add(restarted=1)

    def _collect(self) -> None:
        """Add what the worker processes counted since the last look to the pool's counter."""
        counts = self._counts
        if counts is None:
            return
        width = len(_FIELDS)
        with self._counter._lock:  # one look at a time, so a delta is never added twice
            totals = [sum(counts[w * width + f] for w in range(self.workers)) for f in range(width)]
            deltas = {name: totals[f] - self._seen_counts[f] for f, name in enumerate(_FIELDS) if name != "ready"}
            self._seen_counts = totals
        self._counter.add(**deltas)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop gracefully: workers stop taking messages, finish and ack the ones in hand, and close.

        Prefetched messages a worker had not started go back to the queue without counting an attempt.
        Returns True if every worker finished within ``timeout`` seconds. Worker processes still busy
        then are killed (their unacked messages are delivered again); threads cannot be, and are left
        to finish on their own.
        """
        if not self._started:
            return True
        if self.mode == "thread":
            self._thread_control.stop.set()
        elif self._flags is not None:
            self._flags[_STOP] = 1
        deadline = time.monotonic() + timeout
        with self._lock:
            slots = list(self._slots)
        clean = True
        try:
            for worker in slots:
                worker.runner.join(max(0.0, deadline - time.monotonic()))
                if worker.alive():
                    clean = False
        finally:
            for worker in slots:
                if isinstance(worker.runner, BaseProcess) and worker.runner.is_alive():  # the process mode
                    log.warning("worker process %d of %r did not stop within %g s; killing it", worker.runner.pid,
                                self.queue, timeout)
                    worker.runner.kill()
                    worker.runner.join(5.0)
            self._monitor_stop.set()
            if self._monitor is not None and self._monitor is not threading.current_thread():
                self._monitor.join(5.0)
            if self.mode == "process":
                self._collect()
        if not clean:
            log.warning("worker pool of %r: not every worker finished within %g s", self.queue, timeout)
        return clean

    def pause(self) -> None:
        """Stop taking messages (prefetched ones go back) until :meth:`resume`; in-flight ones finish.

        Before :meth:`start`: the workers start paused.
        """
        if self.mode == "thread":
            self._thread_control.resumed.clear()
        elif self._flags is not None:
            self._flags[_PAUSE] = 1

    def resume(self) -> None:
        """Take messages again after :meth:`pause`."""
        if self.mode == "thread":
            self._thread_control.resumed.set()
        elif self._flags is not None:
            self._flags[_PAUSE] = 0

    def run(self, shutdown_timeout: float = 30.0) -> WorkerPoolStats:
        """Start, work until SIGTERM or SIGINT, stop gracefully, and return the final stats.

        Installs handlers for both signals for its duration (so call it from the main thread), then puts
        the previous ones back: a second Ctrl-C during the shutdown interrupts it as usual.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RingbusError("WorkerPool.run() installs signal handlers, so it must run in the main thread; "
                               "use start() and stop() elsewhere")
        received = threading.Event()
        previous: dict[signal.Signals, Any] = {}

        def on_signal(signum: int, frame: Any) -> None:
            log.info("received %s: stopping the workers of %r", signal.Signals(signum).name, self.queue)
            received.set()
            for sig, handler in previous.items():  # the next one is not ours to soften
                signal.signal(sig, handler)

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        try:
            self.start()
            while not received.wait(1.0):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop(shutdown_timeout)
        return self.stats()

    # -- looking at it --------------------------------------------------------------------------------------------
    @property
    def pids(self) -> list[int]:
        """Process ids of the worker processes ([] for threads)."""
        if self.mode != "process":
            return []
        with self._lock:
            return [w.runner.pid for w in self._slots if isinstance(w.runner, BaseProcess) and w.runner.pid is not None]

    def stats(self) -> WorkerPoolStats:
        """Processed, failed, retried, dead-lettered, in flight, rate, workers alive, restarted, skipped."""
        if self.mode == "process":
            self._collect()
        base = self._counter.snapshot()
        with self._lock:
            alive = sum(1 for w in self._slots if w.alive())
        return WorkerPoolStats(base.processed, base.failed, base.retried, base.dead_lettered, base.in_flight,
                               base.rate, workers=alive, restarted=self._counter.restarted,
                               skipped=self._counter.skipped, latency_ms=base.latency_ms)

    def __enter__(self) -> WorkerPool:
        return self.start() if not self._started else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<WorkerPool {self.queue!r} at {self.url!r}: {self.workers} {self.mode} workers>"
