"""Messaging, the quick path: a :class:`Producer` that sends to a queue and a :class:`Consumer` that works it.

The same two classes run on ``memory://`` (threads of one process) and on the
embedded broker (``tcp://``, ``ipc://``: separate processes). A consumer acks
a message after its handler returns, so a worker that dies mid-task leaves
the task to another one::

    Producer("tcp://127.0.0.1:5555", "task_queue", durable=True).send("resize photo 42")
    Consumer("tcp://127.0.0.1:5555", "task_queue", prefetch=1, durable=True).run(do_task)

For several workers in one call, retries with backoff and stats that sum
them, see :class:`ringbus.patterns.competing_consumers.WorkerPool`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ringbus.bus import Bus, QueueOptions, check_name, check_seconds, connect
from ringbus.message import HeaderValue, Message
from ringbus.patterns._handling import Dispatcher
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = ["Producer", "Consumer"]

log = logging.getLogger("ringbus.messaging")

Body = bytes | bytearray | memoryview | str | Message


class _Endpoint:
    """A queue on a bus: opened from a url (and then owned) or given as a Bus; declared with the options given."""

    def __init__(self, bus: Bus | str, queue: str, declare: dict[str, Any]) -> None:
        check_name("queue", queue)
        self.options = QueueOptions(**declare)  # a wrong option fails here, naming it
        if isinstance(bus, str):
            self.bus, self._owned = connect(bus), True
        elif isinstance(bus, Bus):
            self.bus, self._owned = bus, False
        else:
            raise TypeError(f"bus must be a url or a ringbus.Bus, not {type(bus).__name__}")
        self.queue = queue
        try:
            self.bus.declare_queue(queue, **declare)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the bus if it was opened from a url; a Bus passed in stays open."""
        if self._owned:
            self.bus.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Producer(_Endpoint):
    """Sends to ``queue``, declaring it first (idempotent) with ``declare_options`` (``durable=True``, ...).

    Parameters
    ----------
    bus : str or Bus
        A url to connect to (closed by :meth:`close`), or an open Bus (left open).
    queue : str
        Where messages go.
    **declare_options
        Options of :meth:`ringbus.Bus.declare_queue`; a producer and its consumers must give the same ones.
    """

    def __init__(self, bus: Bus | str, queue: str, **declare_options: Any) -> None:
        super().__init__(bus, queue, declare_options)

    def send(self, body: Body, *, key: str | None = None, priority: int | None = None,
             headers: dict[str, HeaderValue] | None = None, delay: float | None = None,
             dedup_id: str | None = None) -> str:
        """Send one message (a str is sent as its UTF-8 bytes); return its id once the broker holds it."""
        if isinstance(body, str):
            body = body.encode()
        return self.bus.send(self.queue, body, key=key, priority=priority, headers=headers, delay=delay,
                             dedup_id=dedup_id)

    def send_many(self, bodies: Iterable[Body]) -> list[str]:
        """Send several messages in order with one round trip where the backend allows; return their ids."""
        return self.bus.send_many(self.queue, [b.encode() if isinstance(b, str) else b for b in bodies])


class Consumer(_Endpoint):
    """Takes messages from ``queue``: iterate it (and ack yourself), or :meth:`run` a handler that acks for you.

    Parameters
    ----------
    bus : str or Bus
        A url to connect to (closed by :meth:`close`), or an open Bus (left open). One thread uses it.
    queue : str
        Where messages come from; declared with ``declare_options`` first.
    prefetch : int
        Messages held unacked at most. 1 gives fair dispatch among workers of long tasks.
    retry : RetryPolicy
        Backoff of :meth:`run` when the handler raises.
    **declare_options
        Options of :meth:`ringbus.Bus.declare_queue` (``max_attempts`` also tells :meth:`run` which attempt
        is the last).
    """

    def __init__(self, bus: Bus | str, queue: str, *, prefetch: int = 1, retry: RetryPolicy | None = None,
                 **declare_options: Any) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        super().__init__(bus, queue, declare_options)
        self.prefetch = prefetch
        self.retry = retry or RetryPolicy()
        self._counter = StatsCounter()

    def __iter__(self) -> Iterator[Message]:
        """Messages as they come, for ever (until the bus closes); settle each with ack, nack or reject."""
        return self.bus.consume(self.queue, prefetch=self.prefetch)

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, or None if none came within ``timeout`` seconds; settle it yourself."""
        return self.bus.receive(self.queue, timeout=timeout)

    def run(self, handler: Callable[[Message], Any], *, stop: threading.Event | None = None,
            max_messages: int | None = None, idle_timeout: float | None = None) -> int:
        """Call ``handler(message)`` for each message and ack it after; return how many were handled.

        A handler exception nacks the message with the retry policy's backoff; on its last attempt (the
        queue's ``max_attempts``) it goes to the dead-letter queue with the error in its headers, like a
        :class:`~ringbus.patterns.competing_consumers.WorkerPool` does. Returns when ``stop`` is set,
        after ``max_messages`` messages, or when none came for ``idle_timeout`` seconds.
        """
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if max_messages is not None and (isinstance(max_messages, bool) or not isinstance(max_messages, int)
                                         or max_messages < 1):
            raise ValueError(f"max_messages must be an int >= 1 or None, got {max_messages!r}")
        check_seconds("idle_timeout", idle_timeout, allow_zero=False)
        dispatch = Dispatcher(self.queue, handler, retry=self.retry, max_attempts=self.options.max_attempts,
                              dead_letter=self.options.dead_letter_queue(self.queue), count=self._counter.add,
                              log=log)
        poll = 0.25 if stop is not None else None  # with a stop event, look at it this often when idle
        handled = 0
        last = time.monotonic()  # when the last message was handled (or run began)
        while not (stop is not None and stop.is_set()):
            timeout = poll
            if idle_timeout is not None:
                left = idle_timeout - (time.monotonic() - last)
                if left <= 0.0:
                    break
                timeout = left if poll is None else min(poll, left)
            messages = self.bus.consume(self.queue, prefetch=self.prefetch, timeout=timeout)
            try:
                for message in messages:
                    dispatch(self.bus, message)
                    handled += 1
                    last = time.monotonic()
                    if (max_messages is not None and handled >= max_messages) or (stop is not None and stop.is_set()):
                        return handled
            finally:
                messages.close()
        return handled

    def stats(self) -> PatternStats:
        """What :meth:`run` did: processed, failed, retried, dead-lettered, in flight, rate."""
        return self._counter.snapshot()
