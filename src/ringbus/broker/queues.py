"""Queue semantics shared by ``memory://`` and the embedded broker.

A :class:`QueueBook` holds every queue of one broker (or one memory
namespace): waiting, delayed and in-flight messages, leases (visibility
timeouts), attempts, dead letters, TTL, dedup, per-key ordering and
max_length. It does no I/O and no waiting: the caller serialises calls (one
broker thread, or a lock), tells it the time, and learns what to persist
through a :class:`Journal`. Deliverable messages wait in the native
:class:`ringbus.PriorityQueue` (highest priority first, FIFO within one).

State of one message::

    send --> waiting (ready | delayed | blocked behind its key) --fetch--> in flight
    in flight --ack--> gone          --nack/lease expired--> waiting (attempts + 1)
    any waiting or in-flight message --reject/max_attempts/ttl/overflow--> dead-letter queue
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import msgspec

from ringbus._core import PriorityQueue
from ringbus.broker.metrics import QueueMetrics
from ringbus.bus import QueueOptions, QueueStats
from ringbus.errors import Empty, Full, NotFound, RingbusError
from ringbus.message import Message

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["QueueBook", "Queue", "Entry", "Journal", "DEAD_REASON", "DEAD_FROM", "Delivery"]

DEAD_REASON = "ringbus-dead-reason"
DEAD_FROM = "ringbus-dead-from"

RATE_WINDOW = 10.0  # seconds over which queue_stats measures send and ack rates

# Entry.state
WAITING, DELAYED, BLOCKED, IN_FLIGHT, GONE = range(5)

_replace = msgspec.structs.replace


class Entry:
    """One accepted message and where it is in its queue's life cycle."""

    __slots__ = ("seq", "message", "ready_at", "expires_at", "deliveries", "dedup_id", "state", "tag",
                 "deadline", "holder", "lsn", "wire", "enqueued_at")

    def __init__(self, seq: int, message: Message, ready_at: float, expires_at: float | None,
                 deliveries: int = 0, dedup_id: str | None = None, lsn: int = -1) -> None:
        self.seq = seq  # per-queue send order
        self.message = message
        self.ready_at = ready_at  # monotonic time it may be delivered (delay / nack backoff)
        self.expires_at = expires_at  # monotonic time its ttl ends; None for never
        self.deliveries = deliveries  # times delivered so far (message.attempts on the next delivery)
        self.dedup_id = dedup_id
        self.state = WAITING
        self.tag = 0  # delivery tag while in flight: a stale settle cannot touch a later delivery
        self.deadline = 0.0  # lease end while in flight
        self.holder: Hashable | None = None  # consumer (session) holding it while in flight
        self.lsn = lsn  # where the broker's log holds it (-1: nowhere)
        # the frames it arrived in (or was encoded to once, for a topic's groups): logged and first delivered as is
        self.wire: list[bytes | memoryview] | None = None
        # Monotonic time the send was accepted (end-to-end latency); a recovered entry knows its first ready time.
        self.enqueued_at = ready_at


Delivery = tuple[int, Message, "list[bytes | memoryview] | None"]  # (delivery tag, message, its frames if unchanged)


class Journal(Protocol):
    """What a durable backend is told so that it can write the change down before confirming it."""

    def enqueued(self, queue: Queue, entry: Entry) -> None:
        """A durable queue accepted ``entry`` (called before the send is confirmed)."""

    def removed(self, queue: Queue, entry: Entry) -> None:
        """``entry`` left ``queue`` for good (acked, dead-lettered or dropped)."""

    def requeued(self, queue: Queue, entry: Entry) -> None:
        """``entry`` went back to waiting with a new ``deliveries`` count and ``ready_at``."""

    def delivered(self, queue: Queue, entry: Entry) -> None:
        """``entry`` was delivered (its ``deliveries`` grew): a crash now must still count the attempt."""


class Queue:
    """One queue's messages. Use through :class:`QueueBook`, which routes dead letters between queues."""

    def __init__(self, name: str, options: QueueOptions, *, implicit: bool = False, binding: str | None = None,
                 metrics: QueueMetrics | None = None) -> None:
        self.name = name
        self.options = options
        self.implicit = implicit  # declared on the side (a dead-letter queue); an explicit declare may redefine it
        self.binding = binding  # topic pattern for a durable subscription group's queue
        # Entry objects; settled ones stay as tombstones (state GONE) until popped
        self._ready: PriorityQueue[Entry] = PriorityQueue()
        self._ready_count = 0
        self._delayed: list[tuple[float, int, Entry]] = []  # heap by ready_at
        self._expiring: list[tuple[float, int, Entry]] = []  # heap by expires_at
        self._leases: list[tuple[float, int, Entry]] = []  # heap by deadline (stale items skipped by tag)
        self._in_flight: dict[int, Entry] = {}  # tag -> entry
        self._blocked: dict[str, deque[Entry]] = {}  # key -> entries waiting behind the key's unsettled one
        self._active_keys: set[str] = set()
        self._blocked_count = 0
        self._waiting: OrderedDict[int, Entry] | None = OrderedDict() if options.overflow == "drop_oldest" else None
        self._dedup: dict[str, tuple[float, str]] = {}  # dedup_id -> (expires, message id)
        self._dedup_order: deque[tuple[float, str]] = deque()
        self._seq = itertools.count(1)
        self._tags = itertools.count(1)
        self.consumers = 0
        self.sent = self.acked = self.redelivered = self.dead_lettered = self.expired = self.deduplicated = 0
        self.delivered = self.nacked = 0
        self.metrics = metrics  # latency histograms; None when the book keeps none
        self._samples: deque[tuple[float, int, int]] = deque()

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self._ready_count + len(self._delayed) + self._blocked_count

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def ready(self) -> int:
        return self._ready_count

    def next_seq(self) -> int:
        return next(self._seq)

    def skip_seq_past(self, seq: int) -> None:
        """After recovery: new messages must get numbers above every recovered one."""
        self._seq = itertools.count(max(seq + 1, next(self._seq)))

    # -- placing entries -----------------------------------------------------------------------------------------
    def _place(self, entry: Entry, now: float) -> None:
        """Make a waiting entry deliverable, delayed, or blocked behind its key."""
        if self._waiting is not None:
            self._waiting[entry.seq] = entry
        if entry.expires_at is not None:
            heapq.heappush(self._expiring, (entry.expires_at, entry.seq, entry))
        key = entry.message.key
        if self.options.ordered_by_key and key is not None:
            if key in self._active_keys:
                entry.state = BLOCKED
                self._blocked.setdefault(key, deque()).append(entry)
                self._blocked_count += 1
                return
            self._active_keys.add(key)
        self._schedule(entry, now)

    def _schedule(self, entry: Entry, now: float) -> None:
        if entry.ready_at > now:
            entry.state = DELAYED
            heapq.heappush(self._delayed, (entry.ready_at, entry.seq, entry))
        else:
            entry.state = WAITING
            self._ready.put(entry, entry.message.priority)
            self._ready_count += 1

    def _requeue(self, entry: Entry, now: float) -> None:
        """Back to waiting after a delivery; its key stays held so no later message of the key overtakes it."""
        if self._waiting is not None:
            self._waiting[entry.seq] = entry
        self._schedule(entry, now)

    def _unlink(self, entry: Entry, now: float) -> None:
        """Take a waiting or in-flight entry out of every structure (heaps drop tombstones lazily)."""
        state = entry.state
        if state == WAITING:
            self._ready_count -= 1
        elif state == BLOCKED:
            self._blocked[entry.message.key].remove(entry)  # type: ignore[index]
            self._blocked_count -= 1
        elif state == DELAYED:
            self._delayed = [item for item in self._delayed if item[2] is not entry]
            heapq.heapify(self._delayed)
        elif state == IN_FLIGHT:
            self._end_lease(entry.tag)
        if self._waiting is not None:
            self._waiting.pop(entry.seq, None)
        entry.state = GONE
        key = entry.message.key
        if self.options.ordered_by_key and key is not None and state != BLOCKED:
            self._release_key(key, now)

    def _end_lease(self, tag: int) -> None:
        """A delivery was settled or given back. Its item stays in the lease heap (skipped when due) until such
        items outnumber the live ones: then the heap is rebuilt, so a settled message's memory is freed at
        once instead of after its visibility timeout (throughput x timeout of acked messages, otherwise)."""
        del self._in_flight[tag]
        if len(self._leases) > 2 * len(self._in_flight) + 64:
            live = self._in_flight
            self._leases = [item for item in self._leases if live.get(item[1]) is item[2]]
            heapq.heapify(self._leases)

    def _release_key(self, key: str, now: float) -> None:
        backlog = self._blocked.get(key)
        if backlog:
            entry = backlog.popleft()
            self._blocked_count -= 1
            if not backlog:
                del self._blocked[key]
            self._schedule(entry, now)
        else:
            self._active_keys.discard(key)
            self._blocked.pop(key, None)

    def _forget_dedup(self, now: float) -> None:
        order = self._dedup_order
        while order and order[0][0] <= now:
            _, dedup_id = order.popleft()
            held = self._dedup.get(dedup_id)
            if held is not None and held[0] <= now:
                del self._dedup[dedup_id]

    def stats(self, now: float) -> QueueStats:
        send_rate = ack_rate = 0.0
        samples = self._samples
        if not samples or now - samples[-1][0] >= 1.0:  # one sample a second, the last ~10 s
            samples.append((now, self.sent, self.acked))
        while len(samples) > 1 and now - samples[0][0] > RATE_WINDOW:
            samples.popleft()
        first = samples[0]
        if now - first[0] > 0.0:
            send_rate = (self.sent - first[1]) / (now - first[0])
            ack_rate = (self.acked - first[2]) / (now - first[0])
        return QueueStats(
            name=self.name, depth=self.depth, ready=self._ready_count, delayed=len(self._delayed),
            in_flight=len(self._in_flight), consumers=self.consumers, sent=self.sent, acked=self.acked,
            redelivered=self.redelivered, dead_lettered=self.dead_lettered, expired=self.expired,
            deduplicated=self.deduplicated, send_rate=send_rate, ack_rate=ack_rate, delivered=self.delivered,
            nacked=self.nacked, latency_ms=None if self.metrics is None else self.metrics.latency_ms(now),
        )


class QueueBook:
    """Every queue of one broker or memory namespace; all calls from one thread at a time.

    Parameters
    ----------
    journal : Journal or None
        Told of every change to a durable queue (the broker's log); None keeps nothing.
    on_ready : callable or None
        Called with a queue when a message became deliverable on it (wake waiting consumers).
    clock : callable
        Monotonic seconds; tests may pass their own.
    metrics : bool
        Keep latency histograms per queue (queue wait, processing, end to end; ringbus.broker.metrics).
    """

    def __init__(self, *, journal: Journal | None = None, on_ready: Callable[[Queue], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, metrics: bool = True) -> None:
        self.queues: dict[str, Queue] = {}
        self.metrics = metrics
        self._journal = journal
        self._on_ready = on_ready
        self._clock = clock
        self.dropped_dead_letters = 0  # dead letters of a dead-letter queue: nowhere left to go

    # -- declaring -------------------------------------------------------------------------------------------------
    def declare(self, name: str, options: QueueOptions, *, binding: str | None = None) -> tuple[Queue, bool]:
        """Create ``name`` (and its dead-letter queue); return it and whether it is new.

        Raises ValueError naming the differing options if it exists with others.
        """
        queue = self.queues.get(name)
        if queue is not None:
            if queue.implicit:  # declared on the side as a dead-letter queue: the owner's own options win
                queue.implicit = False
                queue.options = options
                if options.overflow == "drop_oldest" and queue._waiting is None:
                    queue._waiting = OrderedDict()
                return queue, True
            if queue.options != options or queue.binding != binding:
                differ = [f for f in QueueOptions.__dataclass_fields__
                          if getattr(queue.options, f) != getattr(options, f)]
                if queue.binding != binding:
                    differ.append("binding")
                raise ValueError(f"queue {name!r} already exists with different {', '.join(differ)} "
                                 f"({', '.join(f'{f}={getattr(queue.options, f, queue.binding)!r}' for f in differ)})")
            return queue, False
        queue = self.queues[name] = Queue(name, options, binding=binding, metrics=self._new_metrics())
        dlq_name = options.dead_letter_queue(name)
        if dlq_name not in self.queues and dlq_name != name:
            # Declared on the side; its own dead letters have nowhere to go (dropped and counted), so
            # dead-letter queues do not chain.
            self.queues[dlq_name] = Queue(dlq_name, QueueOptions(durable=options.durable), implicit=True,
                                          metrics=self._new_metrics())
        return queue, True

    def _new_metrics(self) -> QueueMetrics | None:
        return QueueMetrics(self._clock()) if self.metrics else None

    def get(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise NotFound(f"queue {name!r} does not exist; declare it first with declare_queue({name!r})")
        return queue

    # -- sending ---------------------------------------------------------------------------------------------------
    def send(self, name: str, message: Message, *, delay: float | None = None, ttl: float | None = None,
             dedup_id: str | None = None, wire: list[bytes | memoryview] | None = None) -> str:
        """Accept ``message`` on queue ``name``; return its id (the first one's, for a dedup repeat).

        ``wire``: the frames ``message`` was decoded from, kept to log and deliver it without encoding it again.

        Raises NotFound, or Full when the queue is at max_length with overflow "reject".
        """
        queue = self.get(name)
        now = self._clock()
        options = queue.options
        if dedup_id is not None:
            queue._forget_dedup(now)
            held = queue._dedup.get(dedup_id)
            if held is not None:
                queue.deduplicated += 1
                return held[1]
        if options.max_length is not None and queue.depth >= options.max_length:
            if options.overflow == "reject":
                raise Full(f"queue {name!r} is full ({options.max_length} messages waiting, overflow='reject')")
            assert queue._waiting is not None
            while queue.depth >= options.max_length and queue._waiting:
                _, oldest = queue._waiting.popitem(last=False)
                self._dead_letter(queue, oldest, "overflow", now)
        ttl = ttl if ttl is not None else options.ttl
        entry = Entry(queue.next_seq(), message, now + delay if delay else now,
                      now + ttl if ttl is not None else None, dedup_id=dedup_id)
        entry.wire = wire
        entry.enqueued_at = now
        if options.durable and self._journal is not None:
            self._journal.enqueued(queue, entry)  # first: if the log refuses it, nothing below happened
        if dedup_id is not None and options.dedup_window > 0:
            expires = now + options.dedup_window
            queue._dedup[dedup_id] = (expires, message.id)
            queue._dedup_order.append((expires, dedup_id))
        queue.sent += 1
        queue._place(entry, now)
        if entry.state == WAITING and self._on_ready is not None:
            self._on_ready(queue)
        return message.id

    def restore(self, name: str, entry: Entry) -> None:
        """Put back an entry recovered from the log (no journal, no dedup check)."""
        queue = self.get(name)
        now = self._clock()
        queue.skip_seq_past(entry.seq)
        if entry.dedup_id is not None:
            expires = now + queue.options.dedup_window
            queue._dedup[entry.dedup_id] = (expires, entry.message.id)
            queue._dedup_order.append((expires, entry.dedup_id))
        queue._place(entry, now)
        if entry.deliveries >= queue.options.max_attempts:
            # Delivered max_attempts times and never settled (the broker went down each time): what a lease
            # running out would have done.
            self._dead_letter(queue, entry, "max_attempts", now)

    # -- receiving -------------------------------------------------------------------------------------------------
    def fetch(self, name: str, holder: Hashable, max_items: int) -> list[Delivery]:
        """Deliver up to ``max_items`` messages of ``name`` to ``holder``, each under a lease."""
        queue = self.get(name)
        now = self._clock()
        self._tick_queue(queue, now)
        out: list[Delivery] = []
        ready = queue._ready
        vt = queue.options.visibility_timeout
        journal = self._journal if queue.options.durable else None
        record_wait = queue.metrics.deliveries(now) if queue.metrics is not None else None
        while len(out) < max_items and queue._ready_count:
            try:
                entry = ready.get_nowait()
            except Empty:  # pragma: no cover - the count says there is one
                break
            if entry.state != WAITING:
                continue  # a tombstone: settled while it waited
            if entry.expires_at is not None and entry.expires_at <= now:
                self._expire(queue, entry, now)
                continue
            queue._ready_count -= 1
            if queue._waiting is not None:
                queue._waiting.pop(entry.seq, None)
            tag = next(queue._tags)
            entry.state = IN_FLIGHT
            entry.tag = tag
            entry.holder = holder
            entry.deadline = now + vt
            queue._in_flight[tag] = entry
            heapq.heappush(queue._leases, (entry.deadline, tag, entry))
            message = entry.message
            wire = entry.wire
            if entry.deliveries:
                queue.redelivered += 1
                message = _replace(message, attempts=entry.deliveries)
                wire = None
            entry.deliveries += 1
            if journal is not None:
                journal.delivered(queue, entry)
            if record_wait is not None:
                record_wait(now - entry.ready_at)  # deliverable since ready_at
            out.append((tag, message, wire))
        queue.delivered += len(out)
        return out

    def _settling(self, name: str, tag: int, action: str, now: float) -> tuple[Queue, Entry]:
        queue = self.get(name)
        entry = queue._in_flight.get(tag)
        if entry is None:
            raise RingbusError(
                f"cannot {action} delivery {tag} of queue {name!r}: it is not in flight (already settled, or its "
                "visibility timeout passed and it was delivered again)"
            )
        metrics = queue.metrics
        if metrics is not None and action != "release":
            # Delivered when its lease began: the lease runs visibility_timeout from the delivery.
            metrics.record_processing(now - entry.deadline + queue.options.visibility_timeout)
            if action == "ack":
                metrics.record_end_to_end(now - entry.enqueued_at)
        return queue, entry

    def ack(self, name: str, tag: int) -> None:
        """Settle a delivery as done; raises RingbusError if it is not in flight under this tag."""
        now = self._clock()
        queue, entry = self._settling(name, tag, "ack", now)
        queue._unlink(entry, now)
        queue.acked += 1
        if queue.options.durable and self._journal is not None:
            self._journal.removed(queue, entry)
        if queue.options.ordered_by_key:
            self._wake(queue)  # the next message of the key may have become deliverable

    def nack(self, name: str, tag: int, *, requeue: bool = True, delay: float | None = None) -> None:
        """Settle a delivery as failed: back to waiting (after ``delay``), or dead-lettered."""
        now = self._clock()
        queue, entry = self._settling(name, tag, "nack", now)
        queue.nacked += 1
        if not requeue:
            self._dead_letter(queue, entry, "nacked", now)
        else:
            self._return(queue, entry, now, delay)

    def reject(self, name: str, tag: int) -> None:
        """Settle a delivery as unprocessable: to the dead-letter queue."""
        now = self._clock()
        queue, entry = self._settling(name, tag, "reject", now)
        self._dead_letter(queue, entry, "rejected", now)

    def unfetch(self, name: str, tag: int) -> None:
        """Give back a delivery its consumer never looked at (prefetched, then the consumer stopped).

        Unlike a nack it does not count as an attempt.
        """
        now = self._clock()
        queue, entry = self._settling(name, tag, "release", now)
        entry.deliveries -= 1
        if entry.deliveries:
            queue.redelivered -= 1
        self._return(queue, entry, now, None)

    def extend(self, holder: Hashable, now: float | None = None) -> None:
        """Heartbeat from ``holder``: nothing to do here - leases run their visibility timeout (SQS semantics)."""

    def release(self, holder: Hashable) -> int:
        """``holder`` went away: every message it holds goes back to waiting (attempts counted). Returns how many."""
        now = self._clock()
        count = 0
        for queue in self.queues.values():
            held = [entry for entry in queue._in_flight.values() if entry.holder == holder]
            for entry in held:
                self._return(queue, entry, now, None)
                count += 1
        return count

    def _return(self, queue: Queue, entry: Entry, now: float, delay: float | None) -> None:
        queue._end_lease(entry.tag)
        entry.holder = None
        if entry.deliveries >= queue.options.max_attempts:
            entry.state = GONE
            self._dead_letter(queue, entry, "max_attempts", now, already_unlinked=True)
            return
        entry.ready_at = now + delay if delay else now
        queue._requeue(entry, now)
        if queue.options.durable and self._journal is not None:
            self._journal.requeued(queue, entry)
        if entry.state == WAITING and self._on_ready is not None:
            self._on_ready(queue)

    def _wake(self, queue: Queue) -> None:
        if queue._ready_count and self._on_ready is not None:
            self._on_ready(queue)

    # -- dead letters, expiry, timers ----------------------------------------------------------------------------
    def _dead_letter(self, queue: Queue, entry: Entry, reason: str, now: float, *,
                     already_unlinked: bool = False) -> None:
        if already_unlinked:
            key = entry.message.key
            if queue.options.ordered_by_key and key is not None:
                queue._release_key(key, now)
        else:
            queue._unlink(entry, now)
        queue.dead_lettered += 1
        if queue.options.durable and self._journal is not None:
            self._journal.removed(queue, entry)
        if queue.options.ordered_by_key:
            self._wake(queue)
        target = None if queue.implicit else self.queues.get(queue.options.dead_letter_queue(queue.name))
        if target is None or target is queue:
            self.dropped_dead_letters += 1
            return
        headers = dict(entry.message.headers)
        headers[DEAD_REASON] = reason
        headers[DEAD_FROM] = queue.name
        dead = _replace(entry.message, headers=headers, attempts=entry.deliveries)
        try:
            self.send(target.name, dead)
        except Full:
            self.dropped_dead_letters += 1

    def _expire(self, queue: Queue, entry: Entry, now: float) -> None:
        queue.expired += 1
        self._dead_letter(queue, entry, "expired", now)

    def _tick_queue(self, queue: Queue, now: float) -> None:
        delayed = queue._delayed
        woke = False
        while delayed and delayed[0][0] <= now:
            _, _, entry = heapq.heappop(delayed)
            if entry.state == DELAYED:
                entry.state = WAITING
                queue._ready.put(entry, entry.message.priority)
                queue._ready_count += 1
                woke = True
        leases = queue._leases
        while leases and leases[0][0] <= now:
            _, tag, entry = heapq.heappop(leases)
            if entry.state == IN_FLIGHT and entry.tag == tag:
                self._return(queue, entry, now, None)
                woke = True
        expiring = queue._expiring
        while expiring and expiring[0][0] <= now:
            _, _, entry = heapq.heappop(expiring)
            if entry.state in (WAITING, DELAYED, BLOCKED) and entry.expires_at is not None:
                self._expire(queue, entry, now)
        if woke and queue._ready_count and self._on_ready is not None:
            self._on_ready(queue)

    def tick(self) -> float | None:
        """Move due delayed messages, expire leases and ttls; return seconds until the next timer (None: none)."""
        now = self._clock()
        soonest: float | None = None
        for queue in list(self.queues.values()):
            self._tick_queue(queue, now)
            for heap in (queue._delayed, queue._leases, queue._expiring):
                if heap and (soonest is None or heap[0][0] < soonest):
                    soonest = heap[0][0]
        return None if soonest is None else max(0.0, soonest - now)

    def stats(self, name: str) -> QueueStats:
        queue = self.get(name)
        now = self._clock()
        self._tick_queue(queue, now)
        return queue.stats(now)

    def names(self) -> Iterable[str]:
        return list(self.queues)
