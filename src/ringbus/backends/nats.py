"""``nats://``: the Bus on NATS with JetStream (nats-server >= 2.9), with nats-py.

nats-py is asyncio; the work is done by :class:`ringbus.backends._nats_core.NatsCore` (coroutines) on a private
event-loop thread per Bus, and :class:`NatsBus` is the sync Bus over it (every wait bounded). Mapping, and why
(details and deviations in docs/backends.md, "NATS"):

- **Queue = a JetStream stream** (WorkQueue retention: a message is deleted when acked; file storage, or memory
  for ``durable=False``) with one subject per **priority level** and one durable **pull consumer per level**. A
  receive reads the stream's per-subject counts (one request) and pulls from the highest level that has messages.
  Per-level subjects keep JetStream's own FIFO and redelivery within a level; the alternative, one subject and
  priorities sorted by the client, cannot order what it has not fetched.
- **Visibility timeout = the consumer's ack wait**, capped at 5 s: a longer one is kept by the holder's
  in-progress acks, so a consumer that dies gives its messages back within seconds (not after a 1 h timeout).
  ``attempts`` = the attempts the message carries + JetStream's delivery count - 1. A delivery found at
  ``max_attempts`` (leases ran out) or past its ``ttl`` is dead-lettered by the receiver that finds it
  (``max_deliver`` stays unlimited: at JetStream's limit the message would just stop, with only an advisory nobody
  may be listening to); the sending bus also dead-letters its ttl messages that still wait at their expiry.
- **Dead letters** are republished to the dead-letter queue (``ringbus-dead-reason`` / ``ringbus-dead-from``, the
  other backends' headers), then the delivery is acked. ``reject`` -> ``rejected``, ``nack(requeue=False)`` ->
  ``nacked``, out of attempts -> ``max_attempts``, ``ttl`` passed -> ``expired``, ``max_length`` with
  ``drop_oldest`` -> ``overflow``.
- **nack, delays**: a nacked message is republished one attempt older at the end of its level (or, with a delay,
  on the queue's delayed subject) and the delivery acked - not a JetStream nak, which would put it in front and
  leave it counted in flight until delivered again. JetStream 2.9 has no scheduled messages: a delayed message
  waits on the ``.d`` subject; a receiver that finds one not yet due naks it with its remaining delay (NATS holds
  it), and one that finds it due moves it to its level.
- **dedup** = ``Nats-Msg-Id`` with the stream's duplicate window = ``dedup_window``.
- **max_length** is checked by the sender (waiting = the consumers' undelivered + delayed) and the publish is
  conditional on the stream's last sequence, so racing senders cannot both take the last place. Not a stream
  limit: a WorkQueue stream counts in-flight messages too, ringbus does not.
- **Topics** are subjects ``<prefix>t.<topic>`` captured by one stream (``retention`` publications kept).
  Ephemeral subscriptions are core NATS subscriptions (a group is a NATS queue group); durable groups are durable
  consumers of that stream (``start="earliest"``: deliver all), received as the queue ``@<group>`` like on the
  other backends. ``*`` is NATS's ``*``; ``#`` (zero or more words) is ``>`` (one or more) plus the words before
  it, and where that over-matches the client filters.
- **Request/reply**: a request on ``<prefix>s.<service>`` with an inbox reply subject; servers take one request at
  a time (a subscription the server ends after one message), so a busy server gets no more; "no responders" is
  retried until the timeout.
- **Reconnects**: nats-py reconnects by itself, here after a doubling delay with jitter (50 ms to 2 s). A send
  waits for JetStream's ack; if the server goes away first, the send raises :class:`ringbus.PeerGone` (it may or
  may not have been stored). Nothing acked is lost (file storage survives a kill of the server).

Unsupported: ``ordered_by_key`` (see ``unsupported_features`` and its error).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from ringbus.backends._common import (
    NO_SETTLE,
    Inbox,
    as_message,
    check_prefetch,
    check_subscription,
    reply_message,
)
from ringbus.backends._nats_wire import UNSUPPORTED
from ringbus.bus import (
    Bus,
    Handler,
    Overflow,
    QueueOptions,
    QueueStats,
    Start,
    Subscription,
    check_name,
    check_seconds,
    check_topic,
)
from ringbus.errors import Closed, PeerGone, RingbusError, Unsupported
from ringbus.message import HeaderValue, Message

if TYPE_CHECKING:
    from ringbus.backends._nats_core import Delivery, NatsCore, TopicTap

__all__ = ["NatsBus"]

log = logging.getLogger("ringbus.backends.nats")

T = TypeVar("T")
SLICE = 0.25  # seconds a sync wait sleeps before it looks at close() and stop events
SUBSCRIBER_BUFFER = 10_000


def _unsupported(feature: str) -> Unsupported:
    return Unsupported(f"the nats:// backend does not support {UNSUPPORTED[feature]}")


class _Credit:
    """A consume loop's unsettled messages, settled from any thread."""

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.out = 0
        self.cond = threading.Condition()

    def taken(self) -> None:
        with self.cond:
            self.out += 1

    def settled(self) -> None:
        with self.cond:
            self.out -= 1
            self.cond.notify()

    def wait(self, timeout: float | None, closed: Any) -> int:
        """Room for more messages: waits until some is free, ``timeout`` passes (0) or the bus closes (0)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.out >= self.prefetch:
                left = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
                if left <= 0.0 or closed():
                    return 0
                self.cond.wait(left)
            return self.prefetch - self.out


class _Settle:
    """The settle handle of a delivered message: hands the settle to the loop thread."""

    __slots__ = ("bus", "delivery", "credit")

    def __init__(self, bus: NatsBus, delivery: Delivery, credit: _Credit | None) -> None:
        self.bus = bus
        self.delivery = delivery
        self.credit = credit

    def _done(self) -> None:
        if self.credit is not None:
            self.credit.settled()
            self.credit = None

    # A settle that raises (lease ran out, bus closed) also ends the message's hold on its consume loop's credit.
    def ack(self, message: Message) -> None:
        try:
            if self.credit is not None:  # a consume loop: acks go out without waiting (confirmed when it ends)
                self.bus._core.ack_soon(self.delivery)
            else:
                self.bus._run(self.bus._core.ack(self.delivery))
        finally:
            self._done()

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        try:
            self.bus._run(self.bus._core.nack(self.delivery, requeue, delay))
        finally:
            self._done()

    def reject(self, message: Message) -> None:
        try:
            self.bus._run(self.bus._core.reject(self.delivery))
        finally:
            self._done()


class _NatsSubscription(Subscription):
    def __init__(self, bus: NatsBus, pattern: str, group: str | None, durable: bool, start: Start) -> None:
        self.pattern = pattern
        self.group = group
        self.durable = durable
        self._bus = bus
        self._closed = False
        self._inbox: Inbox | None = None
        self._tap: TopicTap | None = None
        if durable:
            assert group is not None
            bus._run(bus._core.join(pattern, group, start))
        else:
            self._inbox = Inbox(SUBSCRIBER_BUFFER)
            self._tap = bus._run(bus._core.tap(pattern, group, self._inbox.put))

    def receive(self, timeout: float | None = None) -> Message | None:
        if self._closed or self._bus._core.closed:
            raise Closed("subscription is closed")
        timeout = check_seconds("timeout", timeout)
        if self._inbox is None:
            return self._bus.receive(f"@{self.group}", timeout)
        try:
            message = self._inbox.get(None if timeout is None else time.monotonic() + timeout)
        except Closed:
            raise Closed("subscription is closed") from None
        if message is not None:
            message._settle = NO_SETTLE
        return message  # type: ignore[no-any-return]

    @property
    def dropped(self) -> int:
        if self._inbox is None:
            return 0
        return self._inbox.dropped + (self._tap.dropped if self._tap is not None else 0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inbox is not None:
            self._inbox.close()
        if self._tap is not None and not self._bus._core.closed:
            try:
                self._bus._run(self._bus._core.untap(self._tap))
            except (PeerGone, Closed):
                pass


class NatsBus(Bus):
    """A Bus on NATS JetStream; see the module docstring.

    Parameters
    ----------
    url : str
        ``nats://[user:password@]host:port[,host2:port...]`` plus ``prefix=`` in the query: every subject and
        stream this bus uses starts with it (e.g. ``prefix=shop.``; default ``ringbus.``), so several ringbus
        namespaces (and other applications) share one NATS account.
    prefix : str
        The same as the query parameter (the keyword wins).
    timeout : float
        Seconds to wait for NATS to answer one request (and for the first connect) before
        :class:`ringbus.PeerGone`.
    retention : int
        Publications the topic stream keeps for ``start="earliest"``.
    """

    unsupported_features: frozenset[str] = frozenset(UNSUPPORTED)

    def __init__(self, url: str, *, prefix: str | None = None, timeout: float = 10.0,
                 retention: int = 100_000) -> None:
        self.url = url
        self._timeout = check_seconds("timeout", timeout, allow_zero=False) or 10.0
        try:
            from ringbus.backends._nats_core import NatsCore
        except ImportError as exc:  # pragma: no cover - only without the optional dependency
            raise Unsupported(f"the nats:// backend needs nats-py: pip install 'nats-py>=2.6' ({exc})") from None
        self._core: NatsCore = NatsCore(url, prefix=prefix, timeout=self._timeout, retention=retention)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ringbus-nats", daemon=True)
        self._thread.start()
        self._subscriptions: list[_NatsSubscription] = []
        try:
            self._run(self._core.open(), self._timeout + 1.0)
        except BaseException:
            self._stop_loop()
            raise

    # -- the loop thread --------------------------------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and return its result; PeerGone if it takes longer than ``timeout``
        (default: a few request timeouts, which every coroutine here is bounded by)."""
        future = self._submit(coro)
        try:
            return future.result(timeout if timeout is not None else 6 * self._timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise PeerGone(f"NATS at {self._core.where} did not answer within the bus timeout") from None

    def _wait(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run a coroutine that may wait ``timeout`` seconds (None: for ever), looking at close() meanwhile."""
        future = self._submit(coro)
        limit = None if timeout is None else time.monotonic() + timeout + 6 * self._timeout
        while True:
            try:
                return future.result(SLICE)
            except concurrent.futures.TimeoutError:
                if self._core.closed or (limit is not None and time.monotonic() > limit):
                    future.cancel()
                    if self._core.closed:
                        raise Closed(f"bus {self.url!r} is closed") from None
                    raise PeerGone(f"NATS at {self._core.where} did not answer within the bus timeout") from None

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._loop.is_closed():
            coro.close()
            raise Closed(f"bus {self.url!r} is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _stop_loop(self) -> None:
        """End the loop thread, cancelling what still runs on it (nothing is left to wait for)."""
        async def cancel_the_rest() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self._loop).result(5.0)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    def _check_open(self) -> None:
        if self._core.closed:
            raise Closed(f"bus {self.url!r} is closed")

    def _handed(self, delivery: Delivery, credit: _Credit | None) -> Message:
        message = delivery.message
        message._settle = _Settle(self, delivery, credit)
        return message

    # -- queues -----------------------------------------------------------------------------------------------
    def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                      overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                      visibility_timeout: float = 30.0, ordered_by_key: bool = False, ttl: float | None = None,
                      dedup_window: float = 300.0) -> None:
        self._check_open()
        check_name("queue", name)
        if not isinstance(durable, bool):
            raise ValueError(f"durable must be a bool, got {durable!r}")
        options = QueueOptions(durable=durable, max_length=max_length, overflow=overflow, dead_letter=dead_letter,
                               max_attempts=max_attempts, visibility_timeout=visibility_timeout,
                               ordered_by_key=ordered_by_key, ttl=ttl, dedup_window=dedup_window)
        if ordered_by_key:
            raise _unsupported("ordered_by_key")
        self._run(self._core.declare_queue(name, options))

    def send(self, queue: str, body: bytes | bytearray | memoryview | Message, *, key: str | None = None,
             priority: int | None = None, headers: dict[str, HeaderValue] | None = None,
             delay: float | None = None, ttl: float | None = None, dedup_id: str | None = None) -> str:
        self._check_open()
        message = as_message(body, key=key, priority=priority, headers=headers)
        delay = check_seconds("delay", delay)
        ttl = check_seconds("ttl", ttl, allow_zero=False)
        if dedup_id is not None and not isinstance(dedup_id, str):
            raise TypeError(f"dedup_id must be a str or None, not {type(dedup_id).__name__}")
        return self._run(self._core.send(queue, message, delay=delay, ttl=ttl, dedup_id=dedup_id))

    def send_many(self, queue: str, bodies: Any) -> list[str]:
        self._check_open()
        messages = [as_message(body) for body in bodies]
        return self._run(self._core.send_many(queue, messages))

    def receive(self, queue: str, timeout: float | None = None) -> Message | None:
        self._check_open()
        timeout = check_seconds("timeout", timeout)
        deliveries = self._wait(self._core.fetch(queue, 1, timeout), timeout)
        return self._handed(deliveries[0], None) if deliveries else None

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> Generator[Message, None, None]:
        self._check_open()
        check_prefetch(prefetch)
        timeout = check_seconds("timeout", timeout)
        self._run(self._core.queue(queue))  # an unknown queue fails here, not at the first next()
        return self._consume(queue, prefetch, timeout)

    def _consume(self, queue: str, prefetch: int, timeout: float | None) -> Generator[Message, None, None]:
        credit = _Credit(prefetch)
        buffer: deque[Delivery] = deque()
        core = self._core
        core.consumers(queue, +1)
        try:
            while not core.closed:
                if buffer:
                    credit.taken()
                    yield self._handed(buffer.popleft(), credit)
                    continue
                room = credit.wait(timeout, lambda: core.closed)
                if room <= 0:
                    return
                deliveries = self._wait(core.fetch(queue, room, timeout), timeout)
                if not deliveries:
                    return
                buffer.extend(deliveries)
        except Closed:
            return
        finally:
            core.consumers(queue, -1)
            if not core.closed:
                try:
                    if buffer:  # fetched, never handed out: back to the queue
                        self._run(core.release(list(buffer)))
                    self._run(core.sync_acks())
                except (PeerGone, Closed):
                    pass

    def queue_stats(self, queue: str) -> QueueStats:
        self._check_open()
        return self._run(self._core.queue_stats(queue))

    def queues(self) -> list[str]:
        self._check_open()
        return self._run(self._core.queues())

    # -- topics -----------------------------------------------------------------------------------------------
    def publish(self, topic: str, body: bytes | bytearray | memoryview | Message, *,
                headers: dict[str, HeaderValue] | None = None, key: str | None = None) -> str:
        self._check_open()
        check_topic(topic)
        message = as_message(body, key=key, headers=headers)
        self._run(self._core.publish(topic, [message]))
        return message.id

    def publish_many(self, topic: str, bodies: Any) -> list[str]:
        self._check_open()
        check_topic(topic)
        messages = [as_message(body) for body in bodies]
        self._run(self._core.publish(topic, messages))
        return [message.id for message in messages]

    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscription:
        self._check_open()
        check_subscription(pattern, group, durable, start)
        subscription = _NatsSubscription(self, pattern, group, durable, start)
        self._subscriptions.append(subscription)
        return subscription

    # -- services ---------------------------------------------------------------------------------------------
    def request(self, service: str, body: bytes | bytearray | memoryview | Message, *,
                timeout: float | None = 5.0) -> Message:
        self._check_open()
        check_name("service", service)
        timeout = check_seconds("timeout", timeout)
        message = as_message(body)
        return self._wait(self._core.request(service, message, timeout), timeout)

    def serve(self, service: str, handler: Handler, *, stop: threading.Event | None = None) -> None:
        self._check_open()
        check_name("service", service)
        inbox = Inbox()
        core = self._core

        def stopped() -> bool:
            return core.closed or (stop is not None and stop.is_set())

        while not stopped():
            listener = self._run(core.listen(service, lambda request, reply: inbox.put((request, reply))))
            item = None
            while item is None and not stopped():
                try:
                    item = inbox.get(time.monotonic() + SLICE)
                except Closed:
                    return
            if item is None:  # stopped: no more requests; one may have come in the meantime
                if not core.closed:
                    self._run(listener.close())
                item = inbox.get(time.monotonic())
                if item is None or core.closed:
                    return
            request, reply_to = item
            reply: Message | None = None
            error: str | None = None
            try:
                reply = reply_message(request, handler(request))
            except Exception as exc:  # the caller gets the error; this server keeps serving
                log.exception("handler of service %r failed", service)
                error = f"{type(exc).__name__}: {exc}"
            try:
                self._run(core.respond(reply_to, reply, error))
            except Closed:
                return

    # -- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._core.closed:
            return
        for subscription in self._subscriptions:
            if subscription._inbox is not None:
                subscription._inbox.close()
        try:
            self._run(self._core.close(), 3 * self._timeout)
        except (PeerGone, RingbusError) as exc:
            log.warning("closing %s: %s", self.url, exc)
        finally:
            self._stop_loop()

    @property
    def closed(self) -> bool:
        return self._core.closed

    # -- housekeeping -----------------------------------------------------------------------------------------
    def drop_namespace(self) -> list[str]:
        """Delete every stream of this bus's prefix (queues with their messages, the topic stream, dedup records,
        stored large bodies); return the queue names deleted. For tests and teardown."""
        self._check_open()
        return self._run(self._core.drop_namespace())
