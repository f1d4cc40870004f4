"""Sequential convoy: messages of one key handled strictly in send order, one at a time, many keys in parallel.

The ordering comes from the queue, not from this module: the convoy declares
its queue with ``ordered_by_key=True``, so the broker (or ``memory://``) hands
out at most one unsettled message per key, in send order, and the next one of
a key only once the previous one was acked or dead-lettered. Worker threads,
each on its own :class:`ringbus.Bus`, take messages of different keys at the
same time. A failed message is nacked with a backoff delay; it stays the
key's unsettled message, so nothing behind it in its key moves meanwhile.
After ``max_attempts`` the declared policy applies:

``on_failure="dead_letter"``
    the message goes to the dead-letter queue (with the error in its
    headers) and its key carries on with the next message.
``on_failure="hold"``
    the key stops. The failed message, then every later message of the key as
    it arrives, is moved - in order - to the key's holding queue
    ``<queue>.held.<encoded key>`` (durable, ``ordered_by_key``). The set of
    held keys is shared by the instance's workers (a dict under a lock, set
    *before* the failed message is acked, so the worker that receives the
    key's next message already sees the hold). :meth:`SequentialConvoy.release`
    puts a release marker on the queue under the key; the marker comes after
    every message of the key sent before it, and while a worker holds it
    unsettled no later message of the key is delivered. That worker runs the
    holding queue's messages through the handler in order, then lifts the
    hold. A restarted convoy rebuilds its held keys from the non-empty holding
    queues, and an unacked marker is delivered again.

Holds live in one convoy instance: several instances on one queue are fine
with ``dead_letter``, but with ``hold`` run one instance (scale with
``workers``), since another instance would not see a hold taken here.
"""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal

import msgspec

from ringbus.bus import Bus, check_name, check_seconds, connect
from ringbus.errors import Closed, PeerGone, RingbusError
from ringbus.message import Message
from ringbus.patterns._handling import ERROR_HEADER, Dispatcher, Reject, _error_text, send_deduplicated
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = ["SequentialConvoy", "ConvoyStats", "held_queue_name", "CONTROL_HEADER", "ERROR_HEADER", "Reject"]

log = logging.getLogger("ringbus.convoy")

CONTROL_HEADER = "ringbus-convoy"  # on the convoy's own control messages (release markers) in the queue
_RELEASE = "release"
# A holding queue keeps its messages however often a drain puts the first one back.
_HELD_MAX_ATTEMPTS = 1_000_000_000
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:\-]+\Z")
_MAX_NAME = 200
_HASHED = 40  # hex digits of a hashed key in a holding queue's name

OnFailure = Literal["dead_letter", "hold"]
_replace = msgspec.structs.replace


def held_queue_name(queue: str, key: str) -> str:
    """The holding queue of ``key``: ``<queue>.held.k.<key>`` for keys of name characters, else the key's hex
    (``.x.``), or its SHA-256 (``.h.``) when the name would pass 200 characters."""
    if _PLAIN_KEY.match(key):
        name = f"{queue}.held.k.{key}"
    else:
        name = f"{queue}.held.x.{key.encode('utf-8', 'surrogatepass').hex()}"
    if len(name) > _MAX_NAME:
        name = f"{queue}.held.h.{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:_HASHED]}"
    return name


def _key_of(queue: str, name: str) -> str | None:
    """The key a holding queue's name encodes; None for a hashed one (or a name that is not a holding queue)."""
    prefix = f"{queue}.held."
    if not name.startswith(prefix):
        return None
    kind, _, rest = name[len(prefix):].partition(".")
    if kind == "k":
        return rest
    if kind == "x":
        try:
            return bytes.fromhex(rest).decode("utf-8", "surrogatepass")
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class ConvoyStats(PatternStats):
    """:class:`PatternStats` plus the hold policy's counts."""

    held_keys: int  # keys held now
    parked: int  # messages moved to a holding queue: each failed one and those that came behind it
    released: int  # holds lifted: release() was called and the key's holding queue was worked off


class _Hold:
    __slots__ = ("key", "error", "releasing")

    def __init__(self, key: str | None, error: str) -> None:
        self.key = key  # None: a hashed holding queue whose first message could not be looked at
        self.error = error  # why the key is held
        self.releasing = False  # release() was called; its marker has not been worked off yet


class _Dispatcher(Dispatcher):
    """One worker's handle-and-settle step (shared with the other patterns), with the hold policy in place of the
    dead letter after ``max_attempts``; counts go to the worker's own slots (no lock per message)."""

    def __init__(self, convoy: SequentialConvoy, worker: int) -> None:
        busy, done, add = convoy._busy, convoy._done, convoy._counter.add

        def count(in_flight: int = 0, processed: int = 0, **others: int) -> None:
            if in_flight:
                busy[worker] += in_flight
            if processed:
                done[worker] += processed
            if others:
                add(**others)

        super().__init__(convoy.queue, convoy.handler, retry=convoy.retry, max_attempts=convoy.max_attempts,
                         dead_letter=convoy.dead_letter, count=count, log=log,
                         latency=convoy._counter.latency_recorder())
        self.convoy = convoy

    def _dead_letter(self, bus: Bus, message: Message, exc: BaseException, reason: str) -> None:
        if reason == "max_attempts" and self.convoy.on_failure == "hold" and message.key is not None:
            self.convoy._hold(bus, message, message.key, exc)
        else:
            super()._dead_letter(bus, message, exc, reason)

    def dead_letter_now(self, bus: Bus, message: Message, exc: BaseException, reason: str) -> None:
        """Dead-letter whatever the policy (a held message that a Reject or the dead_letter policy gives up on)."""
        super()._dead_letter(bus, message, exc, reason)


class SequentialConvoy:
    """Handle the messages of ``queue`` in send order per key, one at a time per key, keys in parallel.

    Parameters
    ----------
    url : str
        The bus to connect to (``memory://name``, ``tcp://host:port``, ``ipc:///path``); every worker thread
        opens its own connection.
    queue : str
        The queue to work off. Senders put each message under its ordering ``key`` (an order id, a session);
        messages without a key are handled in parallel with no order.
    handler : callable
        ``handler(message)``; returning means done (the convoy acks), raising means failed (retried, then
        ``on_failure``); raising :class:`Reject` dead-letters the message at once under either policy (it can
        never succeed; its key goes on). The convoy settles every message itself; the handler must not.
    workers : int
        Worker threads (each handles one message at a time).
    retry : RetryPolicy
        Backoff between attempts of a failed message (default ``RetryPolicy()``).
    max_attempts : int
        Attempts of one message before ``on_failure`` applies.
    on_failure : {"dead_letter", "hold"}
        After ``max_attempts``: dead-letter the message and continue its key, or hold its key until
        :meth:`release`. Messages without a key are dead-lettered under either policy.
    prefetch : int
        Messages each worker takes ahead (each of a different key: the queue delivers one per key).
    visibility_timeout : float
        Seconds a worker may take over one message before the queue delivers it again.
    durable : bool
        Declare the queue and its holding queues durable.
    declare : bool
        Declare ``queue`` (``ordered_by_key=True``, ``max_attempts=max_attempts + 1``: one delivery of
        headroom, so that a worker dying on the last attempt still leads to the declared policy). With False,
        the queue must exist, declared elsewhere with ``ordered_by_key=True``.
    dead_letter : str or None
        The dead-letter queue; default ``<queue>.dlq``.
    drain_batch : int
        Held messages one release marker works off before it hands over to a fresh marker (so a long backlog
        does not keep one worker, and the other keys it prefetched, waiting).
    poll : float
        Seconds a worker waits for a message before it looks at :meth:`stop`.
    """

    def __init__(self, url: str, queue: str, handler: Callable[[Message], Any], *, workers: int = 4,
                 retry: RetryPolicy | None = None, max_attempts: int = 5, on_failure: OnFailure = "dead_letter",
                 prefetch: int = 8, visibility_timeout: float = 30.0, durable: bool = True, declare: bool = True,
                 dead_letter: str | None = None, drain_batch: int = 100, poll: float = 0.25) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        check_name("queue", queue)
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        for name, value in (("workers", workers), ("max_attempts", max_attempts), ("prefetch", prefetch),
                            ("drain_batch", drain_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if retry is None:
            retry = RetryPolicy()
        if not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        if on_failure not in ("dead_letter", "hold"):
            raise ValueError(f"on_failure must be 'dead_letter' or 'hold', got {on_failure!r}")
        if on_failure == "hold" and len(queue) > _MAX_NAME - len(".held.h.") - _HASHED:
            raise ValueError(f"queue name {queue!r} is too long for on_failure='hold': its holding queues' names "
                             f"need {len('.held.h.') + _HASHED} more characters within 200")
        check_seconds("visibility_timeout", visibility_timeout, allow_zero=False)
        check_seconds("poll", poll, allow_zero=False)
        if dead_letter is not None:
            check_name("dead_letter queue", dead_letter)
        self.url = url
        self.queue = queue
        self.handler = handler
        self.workers = workers
        self.retry = retry
        self.max_attempts = max_attempts
        self.on_failure: OnFailure = on_failure
        self.prefetch = prefetch
        self.visibility_timeout = float(visibility_timeout)
        self.durable = bool(durable)
        self.declare = bool(declare)
        self.dead_letter = dead_letter or f"{queue}.dlq"
        self.drain_batch = drain_batch
        self.poll = float(poll)
        self._counter = StatsCounter()
        self._lock = threading.Lock()
        self._held: dict[str, _Hold] = {}  # holding queue name -> hold; read without the lock on the hot path
        self._declared: set[str] = set()  # holding queues declared since start
        self._parked = self._released = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Per worker, one slot each (only its worker writes it: no lock on the hot path): 1 while its handler
        # runs, and messages it handled.
        self._busy = [0] * workers
        self._done = [0] * workers

    # -- lifetime -------------------------------------------------------------------------------------------------
    def start(self) -> SequentialConvoy:
        """Declare the queue, rebuild held keys from their holding queues, start the workers; returns self."""
        if self._threads:
            raise RuntimeError("this SequentialConvoy is already started; stop() it first")
        self._stop.clear()
        with connect(self.url) as bus:
            if self.declare:
                bus.declare_queue(self.queue, durable=self.durable, dead_letter=self.dead_letter,
                                  max_attempts=self.max_attempts + 1, visibility_timeout=self.visibility_timeout,
                                  ordered_by_key=True)
            else:
                bus.queue_stats(self.queue)  # NotFound now rather than in every worker
            self._recover(bus)
        self._threads = [threading.Thread(target=self._work, args=(i,), name=f"convoy-{self.queue}-{i}", daemon=True)
                         for i in range(self.workers)]
        for thread in self._threads:
            thread.start()
        log.info("convoy on %r started: %d workers, on_failure=%s, %d held keys", self.queue, self.workers,
                 self.on_failure, len(self._held))
        return self

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop taking messages, finish the ones in hand, close the connections; True if every worker left in time.

        Messages a worker took ahead but had not started go back to the queue without counting an attempt.
        """
        check_seconds("timeout", timeout)
        self._stop.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [thread for thread in self._threads if thread.is_alive()]
        self._threads = alive
        if alive:
            log.warning("convoy on %r: %d worker(s) still busy after %s s", self.queue, len(alive), timeout)
        return not alive

    def run(self, *, handle_signals: bool = True) -> None:
        """Start, then block until :meth:`stop` is called (or SIGINT/SIGTERM, in the main thread); then stop."""
        self.start()
        previous: dict[signal.Signals, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, frame: FrameType | None) -> None:
                log.info("convoy on %r: signal %d, stopping", self.queue, signum)
                self._stop.set()
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, on_signal)
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop()

    def __enter__(self) -> SequentialConvoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 30.0, *, interval: float = 0.05) -> bool:
        """Wait until the queue has nothing waiting or in flight (held messages excepted); False on timeout."""
        check_seconds("timeout", timeout)
        check_seconds("interval", interval, allow_zero=False)
        deadline = time.monotonic() + timeout
        with connect(self.url) as bus:
            while True:
                stats = bus.queue_stats(self.queue)
                if stats.depth == 0 and stats.in_flight == 0:
                    return True
                left = deadline - time.monotonic()
                if left <= 0.0:
                    return False
                time.sleep(min(interval, left))

    # -- holds ----------------------------------------------------------------------------------------------------
    def held_keys(self) -> list[str]:
        """The keys held now (sorted), including those whose release has been asked for but not finished."""
        with self._lock:
            return sorted(hold.key for hold in self._held.values() if hold.key is not None)

    def hold_reason(self, key: str) -> str | None:
        """Why ``key`` is held (the handler's last error), or None if it is not held."""
        with self._lock:
            hold = self._held.get(held_queue_name(self.queue, key))
            return None if hold is None else hold.error

    def release(self, key: str) -> bool:
        """Resume a held key: its held messages are handled in order, then the ones that came after.

        Returns False (and does nothing) if the key is not held. Safe from any thread, also while stopped (the
        release marker waits in the queue). If a held message fails ``max_attempts`` times again, the key is
        held again.
        """
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, not {type(key).__name__}")
        name = held_queue_name(self.queue, key)
        with self._lock:
            hold = self._held.get(name)
            if hold is None:
                return False
            hold.releasing = True
        with connect(self.url) as bus:
            bus.send(self.queue, b"", key=key, headers={CONTROL_HEADER: _RELEASE})
        log.info("convoy on %r: release of key %r asked for", self.queue, key)
        return True

    def stats(self) -> ConvoyStats:
        counter = self._counter
        counter.processed = sum(self._done)  # workers count their own; StatsCounter works out the rate
        base = counter.snapshot()
        with self._lock:
            return ConvoyStats(base.processed, base.failed, base.retried, base.dead_lettered, sum(self._busy),
                               base.rate, held_keys=len(self._held), parked=self._parked, released=self._released,
                               latency_ms=base.latency_ms)

    # -- workers --------------------------------------------------------------------------------------------------
    def _work(self, index: int) -> None:
        dispatcher = _Dispatcher(self, index)
        bus: Bus | None = None
        while not self._stop.is_set():
            try:
                if bus is None:
                    bus = connect(self.url)
                messages = bus.consume(self.queue, prefetch=self.prefetch, timeout=self.poll)
                try:
                    for message in messages:
                        try:
                            self._dispatch(bus, message, dispatcher)
                        except (Closed, PeerGone):
                            raise
                        except RingbusError:
                            # A settle that came after the lease ran out (the message is out again), or a move
                            # the bus refused (a full dead-letter queue): the queue delivers it again.
                            log.exception("convoy worker %d: message %s (key %r) not settled here", index,
                                          message.id, message.key)
                        if self._stop.is_set():
                            break
                finally:
                    close = getattr(messages, "close", None)
                    if close is not None:
                        close()  # what was taken ahead goes back now, not when the generator is collected
            except Exception:
                # A broken connection (broker restarted, say): what this worker held goes back to the queue
                # when the connection closes or its heartbeats stop; start again on a new one.
                log.exception("convoy worker %d on %r failed; reconnecting", index, self.queue)
                if bus is not None:
                    bus.close()
                    bus = None
                self._stop.wait(1.0)
        if bus is not None:
            bus.close()

    def _dispatch(self, bus: Bus, message: Message, dispatcher: _Dispatcher) -> None:
        key = message.key
        if key is not None:
            if message.headers.get(CONTROL_HEADER) == _RELEASE:
                self._on_release(bus, message, key, dispatcher)
                return
            if self._held:
                name = held_queue_name(self.queue, key)
                if name in self._held:
                    self._park(bus, message, name)
                    return
        # Run, then ack; or nack with backoff (the key stays blocked behind it); or, after max_attempts,
        # dead-letter - or hold, see _Dispatcher.
        dispatcher(bus, message)

    # -- hold policy ----------------------------------------------------------------------------------------------
    def _declare_held(self, bus: Bus, name: str) -> None:
        if name in self._declared:
            return
        try:
            bus.declare_queue(name, durable=self.durable, dead_letter=self.dead_letter,
                              max_attempts=_HELD_MAX_ATTEMPTS, visibility_timeout=self.visibility_timeout,
                              ordered_by_key=True)
        except ValueError:
            # It exists from an earlier run with other options (a different visibility_timeout, say): use it.
            log.debug("holding queue %r exists with other options; using it as it is", name)
        with self._lock:
            self._declared.add(name)

    def _move(self, bus: Bus, message: Message, name: str, headers: dict[str, Any] | None = None) -> None:
        """Append ``message`` to the holding queue ``name``, then ack it here (dedup_id: no copy on a crash)."""
        self._declare_held(bus, name)
        moved = _replace(message, attempts=0, headers=headers if headers is not None else message.headers)
        send_deduplicated(bus, name, moved, message.id)

    def _hold(self, bus: Bus, message: Message, key: str, error: BaseException) -> None:
        name = held_queue_name(self.queue, key)
        reason = _error_text(error)
        self._move(bus, message, name, {**message.headers, ERROR_HEADER: reason})
        with self._lock:  # before the ack: the key's next message may reach another worker right after it
            self._held[name] = _Hold(key, reason)
            self._parked += 1
        message.ack()
        log.error("key %r held after %d failed attempts of message %s: %s (release(%r) to resume)", key,
                  message.attempts + 1, message.id, reason, key)

    def _park(self, bus: Bus, message: Message, name: str) -> None:
        self._move(bus, message, name)
        with self._lock:
            self._parked += 1
        message.ack()

    def _on_release(self, bus: Bus, marker: Message, key: str, dispatcher: _Dispatcher) -> None:
        name = held_queue_name(self.queue, key)
        hold = self._held.get(name)
        if hold is None:  # released before (a second release(), or a marker delivered again): nothing to do
            marker.ack()
            return
        outcome = self._drain(bus, name, hold, dispatcher)
        if outcome == "empty":
            with self._lock:  # before the ack, for the same reason as in _hold
                self._held.pop(name, None)
                self._released += 1
            log.info("convoy on %r: key %r released", self.queue, key)
        elif outcome == "more":
            # Hand over to a fresh marker. It goes behind what was sent under the key meanwhile; those messages
            # are parked behind the rest of the backlog while the key is still held, so the order holds.
            bus.send(self.queue, b"", key=key, headers={CONTROL_HEADER: _RELEASE})
        marker.ack()

    def _drain(self, bus: Bus, name: str, hold: _Hold, dispatcher: _Dispatcher) -> str:
        """Work off the holding queue ``name`` in order while holding its key's release marker.

        Returns "empty" (all done), "held" (a message failed ``max_attempts`` times again) or "more".
        """
        handled = 0
        failures: dict[str, int] = {}  # attempts since this release, per message
        patience = self.visibility_timeout + self.retry.max_delay
        last_progress = time.monotonic()
        while handled < self.drain_batch and not self._stop.is_set():
            message = bus.receive(name, timeout=self.poll)
            if message is None:
                stats = bus.queue_stats(name)
                if stats.depth == 0 and stats.in_flight == 0:
                    return "empty"
                if time.monotonic() - last_progress > patience:
                    log.warning("holding queue %r made no progress for %.0f s; handing over", name, patience)
                    return "more"
                continue  # a retry's backoff, or a delivery held elsewhere until its lease ends
            last_progress = time.monotonic()
            count = dispatcher.count
            count(in_flight=1)
            try:
                self.handler(message)
            except Reject as exc:
                count(in_flight=-1, failed=1)
                dispatcher.dead_letter_now(bus, message, exc, "rejected")
                handled += 1
                continue
            except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then held again
                count(in_flight=-1, failed=1)
                error = exc
            else:
                count(in_flight=-1, processed=1)
                message.ack()
                handled += 1
                continue
            # Attempts are counted from this release: the holding queue's own count grows with every hold.
            tries = failures[message.id] = failures.get(message.id, 0) + 1
            if tries < self.max_attempts:
                count(retried=1)
                message.nack(requeue=True, delay=self.retry.delay(tries))
                continue
            if self.on_failure == "dead_letter":  # held under an earlier run's hold policy
                dispatcher.dead_letter_now(bus, message, error, "max_attempts")
                handled += 1
                continue
            message.nack(requeue=True)  # stays first in its holding queue (ordered_by_key)
            with self._lock:
                hold.error = _error_text(error)
                hold.releasing = False
            log.error("key %r held again after %d failed attempts of message %s: %s", hold.key, tries,
                      message.id, hold.error)
            return "held"
        return "more"

    def _recover(self, bus: Bus) -> None:
        """Held keys from an earlier run: every non-empty holding queue of this queue (whatever the policy now:
        they keep their order until released)."""
        prefix = f"{self.queue}.held."
        found: dict[str, _Hold] = {}
        for name in bus.queues():
            if not name.startswith(prefix):
                continue
            stats = bus.queue_stats(name)
            if stats.depth + stats.in_flight == 0:
                continue
            key = _key_of(self.queue, name)
            if key is None:  # a hashed name: the key is on its first message
                first = bus.receive(name, timeout=1.0)
                if first is not None:
                    key = first.key
                    first.nack(requeue=True)
            found[name] = _Hold(key, "held before this convoy started")
        with self._lock:
            self._held.update(found)
            self._declared.update(found)
        if found:
            log.warning("convoy on %r: %d key(s) held from before: %s", self.queue, len(found),
                        sorted(hold.key or name for name, hold in found.items()))
