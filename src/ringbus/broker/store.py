"""What the broker writes to its log, and how it rebuilds its queues from the log on start.

Record kinds (payloads are msgpack arrays; times are Unix seconds so that they
survive a restart):

=====  ==========  ==============================================================
kind   name        payload
=====  ==========  ==============================================================
1      DECLARE     [name, options map, binding or nil]
2      ENQUEUE     [queue, seq, ready_at, expires_at, dedup_id, deliveries, header, body or nil (inline)]
3      REMOVE      [queue, [seq, ...]]    acked, dead-lettered or dropped (one record per queue per commit)
4      REQUEUE     [queue, seq, deliveries, ready_at]
5      PUBLISH     [offset, published_at, header, body or nil]   retained topic message
6      DELIVERED   [queue, [[seq, deliveries], ...]]      attempts made (one record per queue per commit)
=====  ==========  ==============================================================

A message is live from its ENQUEUE until its REMOVE. Compaction deletes whole
segments below the oldest live record; every segment starts with the
DECLAREs of all durable queues (written when the log rolls), so deleting old
segments never forgets a queue. A message that stays unsettled for ever pins
its segment (and the ones after it): `ringbus stats` shows the log size.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from ringbus.broker.queues import Entry, Queue, QueueBook
from ringbus.bus import QueueOptions, check_name
from ringbus.codec import decode, encode
from ringbus.errors import ProtocolError, RingbusError

if TYPE_CHECKING:
    from ringbus.broker.log import SegmentedLog
    from ringbus.broker.topics import TopicBook
    from ringbus.message import Message

__all__ = ["Store", "DECLARE", "ENQUEUE", "REMOVE", "REQUEUE", "PUBLISH", "DELIVERED"]

log = logging.getLogger("ringbus.broker.store")

DECLARE, ENQUEUE, REMOVE, REQUEUE, PUBLISH, DELIVERED = 1, 2, 3, 4, 5, 6

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list).decode

# The leading fields of each record kind and their types. A record whose CRC holds but whose fields do not match
# (a bug, or a foreign file) is skipped as unreadable: recovery must never stop the broker from starting.
_TIME = (int, float, type(None))
_SHAPES: dict[int, tuple[Any, ...]] = {
    DECLARE: (str, dict, (str, type(None))),
    ENQUEUE: (str, int, _TIME, _TIME, (str, type(None)), int, bytes, (bytes, type(None))),
    REMOVE: (str, list),
    REQUEUE: (str, int, int, _TIME),
    PUBLISH: (int, (int, float), bytes, (bytes, type(None))),
    DELIVERED: (str, list),
}


def _check_record(kind: int, record: list[Any]) -> list[Any]:
    """``record`` if its fields have the types of its kind; ProtocolError (or ValueError, TypeError) naming why not."""
    shape = _SHAPES.get(kind)
    if shape is None:
        raise ProtocolError(f"unknown record kind {kind}")
    if len(record) < len(shape) or not all(isinstance(v, t) for v, t in zip(record, shape, strict=False)):
        raise ProtocolError(f"fields ({', '.join(type(v).__name__ for v in record)}) do not fit record kind {kind}")
    if kind == REMOVE and not all(type(seq) is int for seq in record[1]):
        raise ProtocolError("REMOVE lists a sequence number that is not an int")
    if kind == DELIVERED and not all(isinstance(p, list) and len(p) == 2 and all(type(n) is int for n in p)
                                     for p in record[1]):
        raise ProtocolError("DELIVERED holds a pair that is not [seq, deliveries]")
    if kind == DECLARE:
        # a durable group's queue is "@" + its group name (and has a binding)
        name = record[0]
        check_name("queue", name[1:] if name.startswith("@") and record[2] is not None else name)
        QueueOptions(**record[1])  # TypeError or ValueError for options this version cannot take
    return record


class Store:
    """The broker's :class:`~ringbus.broker.queues.Journal`: turns queue changes into log records."""

    def __init__(self, log_: SegmentedLog) -> None:
        self.log = log_
        self.topics: TopicBook | None = None  # set by the broker; needed to know which publications are retained
        self._live: list[int] = []  # heap of lsns of live ENQUEUE records
        self._dead: set[int] = set()  # lsns in _live that are no longer live (lazy deletion)
        self._published: deque[tuple[int, int]] = deque()  # (offset, lsn) of retained publications
        self._declared: dict[str, tuple[dict[str, Any], str | None]] = {}
        self._active_segment = -1
        self.recovered_messages = 0
        self.recovered_publications = 0
        self.unlogged = 0  # settles applied in memory that a failed log could not record
        self._removed: dict[str, list[int]] = {}
        self._delivered: dict[str, list[tuple[int, int]]] = {}

    # -- Journal ---------------------------------------------------------------------------------------------
    def enqueued(self, queue: Queue, entry: Entry) -> None:
        wire = entry.wire
        if not wire or len(wire) > 2:  # a body sent in several frames is stored as one
            wire = encode(entry.message)
        header, body = wire[0], (wire[1] if len(wire) > 1 else None)
        now_mono = time.monotonic()
        now = time.time()
        ready = now + (entry.ready_at - now_mono) if entry.ready_at > now_mono else None
        expires = now + (entry.expires_at - now_mono) if entry.expires_at is not None else None
        try:
            lsn = self.log.append(ENQUEUE, _encode((queue.name, entry.seq, ready, expires, entry.dedup_id,
                                                    entry.deliveries, header, body)))
        except RingbusError:
            if not self.log.failed:
                raise
            # The broker refuses sends once its log failed and turns the confirms of the turn that failed
            # into errors; what still gets here is a dead letter moving from a queue whose REMOVE cannot be
            # written either: held in memory, it comes back on its first queue after a restart.
            self.unlogged += 1
            return
        entry.lsn = lsn
        heapq.heappush(self._live, lsn)

    def removed(self, queue: Queue, entry: Entry) -> None:
        if entry.lsn >= 0:
            self._dead.add(entry.lsn)
        # Gathered and written as one record per queue just before the commit (flush): a batch of acks
        # costs one record, not one each. Order is kept: nothing can follow a removal of the same message.
        removed = self._removed.get(queue.name)
        if removed is None:
            removed = self._removed[queue.name] = []
        removed.append(entry.seq)

    def delivered(self, queue: Queue, entry: Entry) -> None:
        held = self._delivered.get(queue.name)
        if held is None:
            held = self._delivered[queue.name] = []
        held.append((entry.seq, entry.deliveries))

    def flush(self) -> None:
        """Write the deliveries and removals gathered since the last commit; called right before committing."""
        if self._delivered:
            for name, attempts in self._delivered.items():
                self._append_settle(DELIVERED, (name, attempts))
            self._delivered = {}
        if self._removed:
            for name, seqs in self._removed.items():
                self._append_settle(REMOVE, (name, seqs))
            self._removed = {}

    def requeued(self, queue: Queue, entry: Entry) -> None:
        now_mono = time.monotonic()
        ready = time.time() + (entry.ready_at - now_mono) if entry.ready_at > now_mono else None
        self._append_settle(REQUEUE, (queue.name, entry.seq, entry.deliveries, ready))

    def _append_settle(self, kind: int, record: tuple[Any, ...]) -> None:
        # A settle that cannot be written is still applied in memory: after a restart the message is
        # delivered again (at-least-once), which is the promise; a failed log must not stop consumers.
        try:
            self.log.append(kind, _encode(record))
        except RingbusError:
            self.unlogged += 1

    # -- declarations and publications -----------------------------------------------------------------------
    def declared(self, name: str, options: QueueOptions, binding: str | None) -> None:
        if not options.durable:
            return
        record = (dataclasses.asdict(options), binding)
        self._declared[name] = record
        self.log.append(DECLARE, _encode((name, record[0], binding)))

    def published(self, offset: int, message: Message, wire: list[bytes | memoryview] | None = None) -> None:
        if not wire or len(wire) > 2:
            wire = encode(message)
        header, body = wire[0], (wire[1] if len(wire) > 1 else None)
        lsn = self.log.append(PUBLISH, _encode((offset, time.time(), header, body)))
        self._published.append((offset, lsn))

    # -- after each commit -----------------------------------------------------------------------------------
    def after_commit(self) -> None:
        """Re-declare queues at the head of a new segment and delete segments nothing live needs.

        Never raises for the disk: a failed commit leaves the log failed (the broker then refuses writes), a
        segment that cannot be deleted is tried again after the next roll.
        """
        segments = self.log.segments()
        active = segments[-1].base_lsn if segments else 0
        if active == self._active_segment or self.log.failed:
            return
        self._active_segment = active
        try:
            for name, (options, binding) in self._declared.items():
                self.log.append(DECLARE, _encode((name, options, binding)))
            if len(segments) > 1:
                # The DECLAREs must be on disk before the segments that held the old ones go.
                self.log.commit()
                self.compact()
        except RingbusError as exc:
            log.error("after the log started a new segment: %s", exc)

    def compact(self) -> int:
        """Delete the segments below the oldest live record; return how many went."""
        live, dead = self._live, self._dead
        while live and live[0] in dead:
            dead.discard(heapq.heappop(live))
        floor = live[0] if live else None
        if self.topics is not None:
            oldest = self.topics.trim()
            published = self._published
            while published and (oldest is None or published[0][0] < oldest):
                published.popleft()
            if published and (floor is None or published[0][1] < floor):
                floor = published[0][1]
        segments = self.log.segments()
        # Never below the active segment's DECLAREs: they are the only record of the queues.
        limit = segments[-1].base_lsn if segments else 0
        floor = limit if floor is None else min(floor, limit)
        return self.log.delete_segments_before(floor)

    def live_messages(self) -> int:
        return len(self._live) - len(self._dead)

    # -- recovery --------------------------------------------------------------------------------------------
    def recover(self, queues: QueueBook, topics: TopicBook) -> dict[str, int]:
        """Replay the log into ``queues`` and ``topics``; return counts of what came back."""
        declared: dict[str, tuple[dict[str, Any], str | None]] = {}
        live: dict[tuple[str, int], list[Any]] = {}
        publications: list[tuple[int, int, float, bytes, bytes]] = []
        bad = 0
        for lsn, kind, payload in self.log.replay():
            try:
                record = _check_record(kind, _decode(payload))
                if kind == ENQUEUE:
                    live[(record[0], record[1])] = [lsn, *record[2:8]]  # later fields: extensions to ignore
                elif kind == REMOVE:
                    name = record[0]
                    for seq in record[1]:
                        live.pop((name, seq), None)
                elif kind == REQUEUE:
                    held = live.get((record[0], record[1]))
                    if held is not None:
                        held[4] = max(held[4], record[2])  # deliveries (a count only grows)
                        held[1] = record[3]  # ready_at
                elif kind == DELIVERED:
                    name = record[0]
                    for seq, deliveries in record[1]:
                        held = live.get((name, seq))
                        if held is not None:
                            held[4] = max(held[4], deliveries)
                elif kind == DECLARE:
                    declared[record[0]] = (record[1], record[2])
                elif kind == PUBLISH:
                    publications.append((lsn, record[0], record[1], record[2], record[3]))
            except (msgspec.DecodeError, ProtocolError, IndexError, TypeError, ValueError) as exc:
                bad += 1  # the CRC held but the content does not parse: a bug or a foreign file; skip it
                log.error("log record at lsn %d (kind %d) is unreadable and was skipped: %s", lsn, kind, exc)
        for name, (options, binding) in declared.items():
            try:
                queues.declare(name, QueueOptions(**options), binding=binding)
                if binding is not None and name.startswith("@"):
                    topics.bind_recovered(name[1:], binding)
            except (ProtocolError, TypeError, ValueError) as exc:  # e.g. options that clash with an earlier record
                bad += 1
                log.error("queue %r declared in the log cannot be restored and was skipped: %s", name, exc)
                continue
            self._declared[name] = (options, binding)
        now_mono, now = time.monotonic(), time.time()
        restored = 0
        for (name, seq), (lsn, ready, expires, dedup_id, deliveries, header, body) in sorted(
                live.items(), key=lambda item: item[1][0]):
            if name not in queues.queues:
                bad += 1
                log.error("message %d of undeclared queue %r at lsn %d was skipped", seq, name, lsn)
                continue
            try:
                frames = [header] if body is None else [header, body]
                message = decode(frames)
            except ProtocolError as exc:
                bad += 1
                log.error("message %d of queue %r at lsn %d does not decode and was skipped: %s", seq, name, lsn, exc)
                continue
            entry = Entry(seq, message, now_mono + (ready - now if ready else 0.0),
                          None if expires is None else now_mono + (expires - now), deliveries, dedup_id, lsn)
            entry.wire = frames
            queues.restore(name, entry)
            heapq.heappush(self._live, lsn)
            restored += 1
        for lsn, offset, published_at, header, body in publications:
            try:
                message = decode([header] if body is None else [header, body])
            except ProtocolError:
                bad += 1
                continue
            topics.restore(offset, published_at, message)
            self._published.append((offset, lsn))
        topics.trim()
        self.recovered_messages = restored
        self.recovered_publications = len(publications)
        return {"messages": restored, "queues": len(declared), "publications": len(publications),
                "unreadable": bad}
