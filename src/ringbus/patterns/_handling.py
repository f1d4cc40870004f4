"""One delivered message through a handler: ack after success, nack with backoff, or dead-letter with the error."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ringbus.bus import Bus
from ringbus.errors import Closed, RingbusError, Unsupported
from ringbus.message import Message
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternLatency, StatsCounter

__all__ = ["Reject", "Dispatcher", "send_deduplicated", "DEAD_REASON", "DEAD_FROM", "ERROR_HEADER", "ERROR_TYPE_HEADER",
           "ATTEMPTS_HEADER"]

# The broker's own dead-letter headers (ringbus.broker.queues), repeated here: patterns import only the Bus.
DEAD_REASON = "ringbus-dead-reason"
DEAD_FROM = "ringbus-dead-from"
# What a pattern adds to a dead letter it sends itself.
ERROR_HEADER = "ringbus-error"  # "ValueError: bad order 42"
ERROR_TYPE_HEADER = "ringbus-error-type"  # "ValueError"
ATTEMPTS_HEADER = "ringbus-attempts"  # deliveries it had, this one included
MAX_ERROR_TEXT = 2000  # characters of the error kept in the header

Count = Callable[..., None]
_DONE, _FAILED, _SKIPPED = 0, 1, 2  # what _handle did with a delivery
_monotonic = time.monotonic



def send_deduplicated(bus: Bus, queue: str, message: Message | bytes, dedup_id: str, **options: Any) -> str:
    """``bus.send`` with ``dedup_id``, for the patterns' own crash-safety sends (a copy made again after a crash is
    dropped by the queue's dedup window). On an engine without dedup windows (RabbitMQ) it sends without one:
    a crash can then leave a repeat, which at-least-once consumers take anyway."""
    try:
        return bus.send(queue, message, dedup_id=dedup_id, **options)
    except Unsupported as exc:
        if exc.feature != "dedup":
            raise
        return bus.send(queue, message, **options)

class Reject(Exception):
    """Raise from a handler to dead-letter the message at once, without retries: it can never succeed.

    The dead letter's headers carry this exception's text, like those of a message that ran out of attempts.
    """


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT - 3] + "..."


class Dispatcher:
    """Runs ``handler(message)`` and settles the message; one per worker, used from that worker's thread.

    - Success: mark it in the idempotency store (if any), then ack.
    - A key the idempotency store has seen: ack without running the handler.
    - An exception on an attempt before the last: ``nack(requeue=True, delay=retry.delay(failures))``.
    - An exception on the last attempt (``message.attempts + 1 >= max_attempts``), or :class:`Reject`: send a
      copy to the dead-letter queue with the error in its headers, then ack the original. The copy goes
      first, so a crash in between leaves the original to be delivered again, never lost; the copy's
      ``dedup_id`` keeps a second copy out of the dead-letter queue within its dedup window.
    - ``BaseException`` (KeyboardInterrupt, SystemExit): nothing is settled; the message goes back when the
      worker's bus closes.

    ``count(**deltas)`` receives processed/failed/retried/dead_lettered/in_flight/skipped changes.

    ``latency`` receives each handled delivery's queue wait, processing time and end-to-end time
    (:class:`PatternLatency`; skipped deliveries are not handled); by default it is the recorder of the
    :class:`StatsCounter` whose ``add`` is ``count``, if it is one and keeps latency. A sample is a
    monotonic clock read before and after the handler, and three native histogram calls.
    """

    def __init__(self, queue: str, handler: Callable[[Message], Any], *, retry: RetryPolicy, max_attempts: int,
                 dead_letter: str, count: Count, idempotency: Any = None, log: logging.Logger | None = None,
                 latency: PatternLatency | None = None) -> None:
        self.queue = queue
        self.handler = handler
        self.retry = retry
        self.max_attempts = max_attempts
        self.dead_letter = dead_letter
        self.count = count
        self.idempotency = idempotency
        self.log = log or logging.getLogger("ringbus.patterns")
        if latency is None:
            owner = getattr(count, "__self__", None)
            if isinstance(owner, StatsCounter):
                latency = owner.latency_recorder()
        self.latency = latency

    def __call__(self, bus: Bus, message: Message) -> None:
        count = self.count
        latency = self.latency
        count(in_flight=1)
        started = _monotonic() if latency is not None else 0.0
        try:
            outcome = self._handle(bus, message)
        finally:
            count(in_flight=-1)
        if latency is not None and outcome != _SKIPPED:
            latency.record(message, started, _monotonic(), outcome == _DONE)

    def _handle(self, bus: Bus, message: Message) -> int:
        """Run and settle; returns _DONE (handled and acked), _FAILED (retried or dead-lettered) or _SKIPPED."""
        store = self.idempotency
        try:
            if store is not None:
                key = store.key_of(message)
                if store.seen(key):
                    self._settle(message, "ack")
                    self.count(skipped=1)
                    return _SKIPPED
            self.handler(message)
            if store is not None:
                store.mark(key)
        except Reject as exc:
            self.count(failed=1)
            self._dead_letter(bus, message, exc, "rejected")
            return _FAILED
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried or dead-lettered
            self.count(failed=1)
            failures = message.attempts + 1
            if failures >= self.max_attempts:
                self._dead_letter(bus, message, exc, "max_attempts")
            else:
                delay = self.retry.delay(failures)
                self.log.info("message %s of %r failed (attempt %d of %d), retrying in %.3f s: %s", message.id,
                              self.queue, failures, self.max_attempts, delay, _error_text(exc))
                self._settle(message, "nack", delay)
                self.count(retried=1)
            return _FAILED
        self._settle(message, "ack")
        self.count(processed=1)
        return _DONE

    def _settle(self, message: Message, action: str, delay: float | None = None) -> None:
        """Ack or nack; a delivery that is no longer ours (its lease ran out) is logged, not raised."""
        try:
            if action == "ack":
                message.ack()
            else:
                message.nack(requeue=True, delay=delay)
        except Closed:
            raise
        except RingbusError as exc:
            # Its visibility timeout passed while it waited or ran, so it went back and will come again (or
            # already did): keep prefetch x handler time below the queue's visibility_timeout.
            self.log.warning("could not %s message %s of %r: %s", action, message.id, self.queue, exc)

    def _dead_letter(self, bus: Bus, message: Message, exc: BaseException, reason: str) -> None:
        failures = message.attempts + 1
        text = _error_text(exc)
        headers = dict(message.headers)
        headers.update({DEAD_REASON: reason, DEAD_FROM: self.queue, ERROR_HEADER: text,
                        ERROR_TYPE_HEADER: type(exc).__name__, ATTEMPTS_HEADER: failures})
        copy = Message(message.body, id=message.id, key=message.key, priority=message.priority, headers=headers,
                       timestamp=message.timestamp, attempts=failures, reply_to=message.reply_to,
                       correlation_id=message.correlation_id, content_type=message.content_type, meta=message.meta)
        try:
            # dedup: a crash between this send and the ack below must not dead-letter it twice
            send_deduplicated(bus, self.dead_letter, copy, f"dead-letter:{message.id}")
        except (RingbusError, ValueError, TypeError) as send_error:
            # Not lost: back to the queue, whose own max_attempts dead-letters it (without our error header).
            self.log.error("cannot send message %s to dead-letter queue %r (%s); nacking it instead", message.id,
                           self.dead_letter, send_error)
            self._settle(message, "nack", self.retry.delay(failures))
            self.count(retried=1)
            return
        self._settle(message, "ack")
        self.count(dead_lettered=1)
        self.log.warning("message %s of %r dead-lettered to %r after %d attempt(s) (%s): %s", message.id, self.queue,
                         self.dead_letter, failures, reason, text)
