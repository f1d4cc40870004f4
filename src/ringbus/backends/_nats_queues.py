"""Queue operations of the ``nats://`` backend's asyncio core: declare, send, fetch and stats.

A queue is a WorkQueue stream with one subject (and one durable pull consumer) per priority level, and a subject
for delayed messages (names in :mod:`ringbus.backends._nats_wire`). The ringbus options live in the stream's
description, so any process can read them back and compare a second declaration with the first.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import logging
import time
from dataclasses import asdict
from typing import Any

import msgspec
import nats.errors as nats_errors
from nats.aio.msg import Msg

from ringbus.backends import _nats_wire as wire
from ringbus.backends._nats_base import CoreBase, Delivery, Queue, counts_lock, nak_delay
from ringbus.backends._nats_js import NOT_FOUND_CODES, STREAM_EXISTS_OTHERWISE, WRONG_LAST_SEQUENCE, StreamState
from ringbus.backends._nats_wire import ApiError
from ringbus.bus import TOPIC_HEADER, QueueOptions, QueueStats, topic_matcher
from ringbus.errors import Full, NotFound, RingbusError

__all__ = ["QueueOps"]

log = logging.getLogger("ringbus.backends.nats")

PUBLISH_CHUNK = 256  # publishes in flight at once in send_many
DELAYED_CHUNK = 256  # delayed messages looked at per pull
WAIT_SLICE = 1.0  # a waiting receive looks again at least this often (a bell may be lost in a reconnect)
DELAY_SLICE = 0.05  # ... and this often while the queue holds delayed messages
EXPIRY_WATCH_MAX = 100_000  # messages with a ttl a core watches for expiry at once
SUBJECTS_OVERLAP = 10065
_json = msgspec.json.encode
_unjson = msgspec.json.decode


class QueueOps(CoreBase):
    """declare_queue, send, fetch (receive and consume), queue_stats and queues, as coroutines."""

    # -- declarations -----------------------------------------------------------------------------------------
    def _stream_config(self, name: str, options: QueueOptions, side: bool) -> dict[str, Any]:
        record = {"ringbus": 1, "queue": name, "options": asdict(options), "side": side}
        window = options.dedup_window if options.dedup_window > 0 else 120.0  # 0: no Nats-Msg-Id is ever sent
        return {"name": self.stream_of(name), "subjects": [self.root_of(name) + ".*"], "retention": "workqueue",
                "storage": "file" if options.durable else "memory", "discard": "old", "max_msgs": -1,
                "max_bytes": -1, "max_age": 0, "max_msg_size": -1, "max_consumers": -1, "num_replicas": 1,
                "duplicate_window": int(window * 1e9), "description": _json(record).decode()}

    async def declare_queue(self, name: str, options: QueueOptions) -> None:
        await self.declare(name, options, side=False)
        letters = options.dead_letter_queue(name)
        if letters != name:
            await self.declare(letters, QueueOptions(durable=options.durable), side=True)

    async def declare(self, name: str, options: QueueOptions, side: bool) -> None:
        """Create queue ``name``'s stream; if it exists, compare options (``side``: a dead-letter queue made with
        another; it keeps what it has, and a later declaration of it with options of its own replaces those)."""
        config = self._stream_config(name, options, side)
        try:
            await self.js.add_stream(config)
        except ApiError as exc:
            if exc.err_code == SUBJECTS_OVERLAP:
                raise ValueError(f"queue {name!r}: another JetStream stream already takes its subjects "
                                 f"{config['subjects']}") from None
            if exc.err_code != STREAM_EXISTS_OTHERWISE:
                raise
            record = await self.record_of(name)
            if side:
                self.remember(name, QueueOptions(**record["options"]))
                return
            mine = _unjson(_json(asdict(options)))
            differ = sorted(k for k in mine if record["options"].get(k) != mine[k])
            if differ and not (record.get("side") and record["options"]["durable"] == options.durable):
                raise ValueError(f"queue {name!r} exists with other options: " + ", ".join(
                    f"{k}={record['options'].get(k)!r} (not {mine[k]!r})" for k in differ)) from None
            if differ or record.get("side"):
                await self.js.update_stream(config)  # a dead-letter queue made on the side, declared now
        self.remember(name, options)

    async def queues(self) -> list[str]:
        streams = await self.js.stream_names(self.prefix + "q.>")
        names = (wire.queue_of_stream(stream, self.stream_prefix) for stream in streams)
        return sorted(name for name in names if name is not None and not name.startswith("@"))

    async def consumer(self, queue: Queue, level: str) -> str:
        """The durable pull consumer of ``level`` (a priority, or the delayed messages); made on first use."""
        consumer = wire.consumer_of_level(level)
        if (queue.stream, consumer) not in self._made:
            wait = 30.0 if level == wire.DELAYED else queue.ack_wait
            try:
                await self.js.add_consumer(queue.stream, {
                    "durable_name": consumer, "deliver_policy": "all", "ack_policy": "explicit",
                    "ack_wait": int(wait * 1e9), "max_deliver": -1, "filter_subject": f"{queue.root}.{level}",
                    "replay_policy": "instant", "max_ack_pending": -1, "max_waiting": 512})
            except ApiError as exc:
                if exc.err_code in NOT_FOUND_CODES:
                    self.forget(queue.name)
                    raise NotFound(f"queue {queue.name!r} is gone from NATS") from None
                raise
            self._made.add((queue.stream, consumer))
        return consumer

    # -- send -------------------------------------------------------------------------------------------------
    async def send(self, name: str, message: Any, *, delay: float | None = None, ttl: float | None = None,
                   dedup_id: str | None = None) -> str:
        queue = await self.queue(name)
        if queue.group is not None:
            raise ValueError(f"{name!r} is a durable group's queue: it is filled by publish() on its topics")
        options = queue.options
        if message.attempts:  # a send is a new message: its deliveries count from 0 (the attempts field travels)
            message = msgspec.structs.replace(message, attempts=0)
        headers: dict[str, str] = {}
        ttl = options.ttl if ttl is None else ttl
        if ttl is not None:
            headers[wire.H_EXPIRES] = repr(time.time() + (delay or 0.0) + ttl)
        dedup = dedup_id is not None and options.dedup_window > 0
        if dedup:
            headers[wire.H_MSG_ID] = wire.dedup_key(dedup_id)  # type: ignore[arg-type]
        payload = await self.payload_of(message, headers)
        if delay:
            subject = f"{queue.root}.{wire.DELAYED}"
            headers[wire.H_DUE] = repr(time.time() + delay)
            headers[wire.H_LEVEL] = str(message.priority)
        else:
            subject = f"{queue.root}.{message.priority}"
        if options.max_length is None:
            ack = await self.publish_to(queue, subject, payload, headers or None)
        else:
            ack = await self._publish_bounded(queue, subject, payload, headers)
        if ack.duplicate:
            with counts_lock:
                queue.counts.deduplicated += 1
            return await self._original_id(queue, ack.seq, dedup_id or "", message.id)
        with counts_lock:
            queue.counts.sent += 1
        if dedup:
            await self._note_dedup(queue, dedup_id or "", message.id)
        if ttl is not None and not delay:
            self._watch_expiry(time.time() + ttl, ack.seq, queue, str(message.priority))
        return str(message.id)

    async def send_many(self, name: str, messages: list[Any]) -> list[str]:
        """Send in order, up to PUBLISH_CHUNK publishes in flight (JetStream stores one connection's publishes in
        the order they arrive). Not atomic: an error leaves the ones before it sent."""
        queue = await self.queue(name)
        if queue.group is not None or queue.options.max_length is not None or queue.options.ttl is not None:
            return [await self.send(name, message) for message in messages]
        for start in range(0, len(messages), PUBLISH_CHUNK):
            chunk = messages[start:start + PUBLISH_CHUNK]
            sends = []
            for message in chunk:
                if message.attempts:
                    message = msgspec.structs.replace(message, attempts=0)
                headers: dict[str, str] = {}
                payload = await self.payload_of(message, headers)
                sends.append(self.publish_to(queue, f"{queue.root}.{message.priority}", payload, headers or None))
            for result in await asyncio.gather(*sends, return_exceptions=True):
                if isinstance(result, BaseException):
                    raise result
            with counts_lock:
                queue.counts.sent += len(chunk)
        return [message.id for message in messages]

    async def _publish_bounded(self, queue: Queue, subject: str, payload: bytes,
                               headers: dict[str, str]) -> wire.PubAck:
        """Publish unless ``max_length`` messages wait: the count is read first and the publish carries the
        stream's last sequence, so a send that raced another one is refused by NATS and counted again."""
        options = queue.options
        assert options.max_length is not None
        for _ in range(100):
            state = await self.js.stream_state(queue.stream, queue.root + ".*")
            waiting, levels = await self._waiting(queue, state)
            if waiting >= options.max_length:
                if options.overflow == "reject":
                    raise Full(f"queue {queue.name!r} is full ({waiting} messages waiting, overflow='reject')")
                if not await self._drop_oldest(queue, levels):
                    raise Full(f"queue {queue.name!r} is full and every waiting message is delayed: none to drop")
                continue
            try:
                return await self.publish_to(queue, subject, payload,
                                             {**headers, "Nats-Expected-Last-Sequence": str(state.last_seq)})
            except ApiError as exc:
                if exc.err_code != WRONG_LAST_SEQUENCE:
                    raise
        raise Full(f"queue {queue.name!r}: gave up a send after 100 races with other senders for the last place")

    async def _waiting(self, queue: Queue, state: StreamState) -> tuple[int, list[str]]:
        """Messages waiting (not in flight) and the levels that have any, from the stream and its consumers."""
        subjects = state.subjects or {}
        waiting = subjects.get(f"{queue.root}.{wire.DELAYED}", 0)
        levels = []
        for subject, count in subjects.items():
            level = wire.level_of(subject)
            if level == wire.DELAYED or count <= 0:
                continue
            try:
                pending = (await self.js.consumer_info(queue.stream, wire.consumer_of_level(level))).num_pending
            except ApiError as exc:
                if exc.err_code not in NOT_FOUND_CODES:
                    raise
                pending = count  # nobody received from this level yet
            waiting += pending
            if pending:
                levels.append(level)
        return waiting, levels

    async def _drop_oldest(self, queue: Queue, levels: list[str]) -> bool:
        """Dead-letter (``overflow``) the oldest waiting message of the lowest level that has one."""
        for level in sorted(levels, key=int):
            consumer = await self.consumer(queue, level)
            msgs, _ = await self.js.pull(queue.stream, consumer, 1, None)
            for msg in msgs:
                delivery = Delivery(wire.unpack(msg.data), queue, level, msg, time.monotonic(), consumer)
                await self.dead(delivery, "overflow")
                return True
        return False

    # -- expiry of messages nobody receives --------------------------------------------------------------------
    def _watch_expiry(self, expires: float, seq: int, queue: Queue, level: str) -> None:
        """Remember a message sent with a ttl, to dead-letter it at its expiry if it still waits then: JetStream
        2.9 has no per-message TTL, and a receiver only meets an expired message when it fetches it."""
        if len(self._expiring) >= EXPIRY_WATCH_MAX:
            return  # beyond this, expiry is found by the receivers alone
        heapq.heappush(self._expiring, (expires, seq, queue.name, level))
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while self._expiring and not self._closed:
            await asyncio.sleep(min(max(self._expiring[0][0] - time.time(), 0.005), 1.0))
            due = []
            while self._expiring and self._expiring[0][0] <= time.time():
                due.append(heapq.heappop(self._expiring))
            delivered: dict[tuple[str, str], int] = {}
            for _, seq, name, level in due:
                try:
                    await self._expire(name, level, seq, delivered)
                except (ApiError, RingbusError, nats_errors.Error) as exc:
                    log.warning("could not expire message %d of queue %r: %r", seq, name, exc)

    async def _expire(self, name: str, level: str, seq: int, delivered: dict[tuple[str, str], int]) -> None:
        """Dead-letter message ``seq`` as expired unless it was delivered (then its receiver sees the expiry)."""
        queue = await self.queue(name)
        key = (queue.stream, level)
        if key not in delivered:
            try:
                info = await self.js.consumer_info(queue.stream, wire.consumer_of_level(level))
                delivered[key] = info.delivered.stream_seq if info.delivered else 0
            except ApiError as exc:
                if exc.err_code not in NOT_FOUND_CODES:
                    raise
                delivered[key] = 0  # nobody received from this level yet
        if seq <= delivered[key]:
            return
        stored = await self.js.get_message(queue.stream, seq=seq)
        if stored is None or not await self.js.delete_message(queue.stream, seq):
            return  # consumed already
        headers = wire.parse_headers(base64.b64decode(stored["hdrs"])) if stored.get("hdrs") else None
        await self.letter(queue, base64.b64decode(stored.get("data", "")), headers, "expired")

    # -- dedup ------------------------------------------------------------------------------------------------
    def _dedup_subject(self, queue: Queue, dedup_id: str) -> str:
        digest = hashlib.sha1(dedup_id.encode()).hexdigest()
        return f"{self.prefix}dd.{wire.token(queue.name)}.{digest}"

    @property
    def _dedup_stream(self) -> str:
        return (self.prefix + "dedup").replace(".", "~")

    async def _original_id(self, queue: Queue, seq: int, dedup_id: str, fallback: str) -> str:
        """The id of the message a repeated dedup_id repeats: from the stream while it waits, else from the record
        its send left in the dedup stream."""
        stored = await self.js.get_message(queue.stream, seq=seq)
        if stored is not None:
            return wire.unpack(base64.b64decode(stored.get("data", ""))).id
        record = await self.js.get_message(self._dedup_stream, last_by_subj=self._dedup_subject(queue, dedup_id))
        return fallback if record is None else str(_unjson(base64.b64decode(record["data"])))

    async def _note_dedup(self, queue: Queue, dedup_id: str, message_id: str) -> None:
        if not self._dedup_ready:
            try:
                await self.js.add_stream({"name": self._dedup_stream, "subjects": [self.prefix + "dd.>"],
                                          "retention": "limits", "storage": "file", "max_msgs_per_subject": 1,
                                          "max_bytes": 64 << 20, "discard": "old", "num_replicas": 1})
            except ApiError as exc:
                if exc.err_code != STREAM_EXISTS_OTHERWISE:
                    raise
            self._dedup_ready = True
        # Not waited for: only a repeat that comes after the original was consumed reads it.
        await self.nc.publish(self._dedup_subject(queue, dedup_id), _json(message_id))

    # -- fetch ------------------------------------------------------------------------------------------------
    async def fetch(self, name: str, count: int, timeout: float | None) -> list[Delivery]:
        """Up to ``count`` deliveries of queue ``name``, highest priority first; [] if none came within
        ``timeout`` seconds (None: wait until some come)."""
        queue = await self.queue(name)
        if queue.group is not None:
            return await self._fetch_group(queue, count, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        bell: Any = None
        rung = asyncio.Event()

        async def ring(msg: Msg) -> None:
            rung.set()

        try:
            while True:
                self.check_open()
                got, delayed = await self._round(queue, count)
                if got:
                    return got
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0.0:
                    return []
                if bell is None:
                    # Any publish on the queue's subjects rings; subscribed before looking again so none is missed.
                    bell = await self.nc.subscribe(queue.root + ".*", cb=ring)
                    await self.flush()
                    continue
                wait = DELAY_SLICE if delayed else WAIT_SLICE
                try:
                    await asyncio.wait_for(rung.wait(), wait if left is None else min(wait, left))
                except asyncio.TimeoutError:
                    pass
                rung.clear()
        except nats_errors.TimeoutError as exc:
            raise self.js.gone("a flush", exc) from None
        finally:
            if bell is not None:
                try:
                    await bell.unsubscribe()
                except (nats_errors.BadSubscriptionError, nats_errors.ConnectionClosedError):
                    pass

    async def _round(self, queue: Queue, count: int) -> tuple[list[Delivery], bool]:
        """One look at the queue: move due delayed messages in, then take from the levels, highest first."""
        subjects = (await self.js.stream_state(queue.stream, queue.root + ".*")).subjects or {}
        delayed = subjects.get(f"{queue.root}.{wire.DELAYED}", 0)
        if delayed and await self._move_due(queue):
            subjects = (await self.js.stream_state(queue.stream, queue.root + ".*")).subjects or {}
        levels = sorted((wire.level_of(s) for s, n in subjects.items() if n > 0 and not s.endswith(".d")),
                        key=int, reverse=True)
        out: list[Delivery] = []
        for level in levels:
            consumer = await self.consumer(queue, level)
            msgs, status = await self.js.pull(queue.stream, consumer, count - len(out), None)
            if status in ("409", "503"):
                self._made.discard((queue.stream, consumer))  # deleted behind us: made again next time
            for msg in msgs:
                delivery = await self.accept(queue, level, msg, consumer)
                if delivery is not None:
                    out.append(delivery)
            if len(out) >= count:
                break
        return out, bool(delayed)

    async def _move_due(self, queue: Queue) -> bool:
        """Due delayed messages join their level (behind what waits there); the others wait in NATS (a nak with
        their remaining delay). True if any moved."""
        consumer = await self.consumer(queue, wire.DELAYED)
        msgs, _ = await self.js.pull(queue.stream, consumer, DELAYED_CHUNK, None)
        moved = False
        now = time.time()
        for msg in msgs:
            headers = dict(msg.headers or {})
            due = float(headers.pop(wire.H_DUE, "0"))
            if due > now:
                await self.nc.publish(msg.reply, nak_delay(due - now))
                continue
            level = headers.pop(wire.H_LEVEL, "0")
            headers.pop(wire.H_MSG_ID, None)
            await self.publish_to(queue, f"{queue.root}.{level}", msg.data, headers or None)
            await self.nc.publish(msg.reply, b"+ACK")
            moved = True
        return moved

    async def accept(self, queue: Queue, level: str, msg: Msg, consumer: str) -> Delivery | None:
        """A pulled message becomes a leased delivery, or (expired, out of attempts) a dead letter and None."""
        message = wire.unpack(msg.data)
        headers = msg.headers
        if headers and wire.H_BODY in headers:
            stored = await (await self.object_store()).get(headers[wire.H_BODY])
            message = msgspec.structs.replace(message, body=stored.data)
        message.attempts += wire.delivery_count(msg.reply) - 1
        options = queue.options
        delivery = Delivery(message, queue, level, msg, queue.lease(), consumer)
        expires = headers.get(wire.H_EXPIRES) if headers else None
        if expires is not None and float(expires) <= time.time():
            await self.dead(delivery, "expired")
            return None
        if message.attempts >= options.max_attempts:
            await self.dead(delivery, "max_attempts")
            return None
        if message.attempts:
            with counts_lock:
                queue.counts.redelivered += 1
        self.hold(delivery)
        return delivery

    async def _fetch_group(self, queue: Queue, count: int, timeout: float | None) -> list[Delivery]:
        """Deliveries of a durable group: a waiting pull on its consumer of the topic stream."""
        assert queue.group is not None and queue.pattern is not None
        consumer = wire.group_consumer(queue.group)
        subjects, exact = wire.subject_filters(queue.pattern)
        exact = exact and len(subjects) == 1  # one_filter() widened two subjects to their parent
        match = topic_matcher(queue.pattern)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.check_open()
            left = WAIT_SLICE if deadline is None else min(deadline - time.monotonic(), WAIT_SLICE)
            msgs, _ = await self.js.pull(self.topic_stream, consumer, count, left if left > 0.001 else None)
            out = []
            for msg in msgs:
                topic = msg.subject[len(self.topic_root):]
                if not exact and not match(topic):
                    await self.nc.publish(msg.reply, b"+ACK")  # over-matched by the consumer's one filter
                    continue
                delivery = await self.accept(queue, "0", msg, consumer)
                if delivery is not None:
                    delivery.message.headers[TOPIC_HEADER] = topic
                    out.append(delivery)
            if out or (deadline is not None and time.monotonic() >= deadline):
                return out

    # -- stats ------------------------------------------------------------------------------------------------
    async def queue_stats(self, name: str) -> QueueStats:
        queue = await self.queue(name)
        await self.sync_acks()
        try:
            if queue.group is None:
                ready, delayed, in_flight = await self._server_counts(queue)
            else:
                info = await self.js.consumer_info(self.topic_stream, wire.group_consumer(queue.group))
                ready, delayed, in_flight = info.num_pending, 0, info.num_ack_pending
        except ApiError as exc:
            if exc.err_code in NOT_FOUND_CODES:
                self.forget(name)
                raise NotFound(f"queue {name!r} is gone from NATS") from None
            raise
        counts = queue.counts
        with counts_lock:
            now = time.monotonic()
            counts.samples.append((now, counts.sent, counts.acked))
            while len(counts.samples) > 2 and now - counts.samples[0][0] > 5.0:
                counts.samples.popleft()
            first = counts.samples[0]
            span = now - first[0]
            return QueueStats(
                name=name, depth=ready + delayed, ready=ready, delayed=delayed, in_flight=in_flight,
                consumers=counts.consumers, sent=counts.sent, acked=counts.acked, redelivered=counts.redelivered,
                dead_lettered=counts.dead_lettered, expired=counts.expired, deduplicated=counts.deduplicated,
                send_rate=(counts.sent - first[1]) / span if span > 0 else 0.0,
                ack_rate=(counts.acked - first[2]) / span if span > 0 else 0.0)

    async def _server_counts(self, queue: Queue) -> tuple[int, int, int]:
        """Ready, delayed and in flight: the stream's messages per subject, less what the consumers have out."""
        subjects = (await self.js.stream_state(queue.stream, queue.root + ".*")).subjects or {}
        delayed = subjects.get(f"{queue.root}.{wire.DELAYED}", 0)
        total = in_flight = 0
        for subject, count in subjects.items():
            level = wire.level_of(subject)
            if level == wire.DELAYED:
                continue
            total += count
            try:
                in_flight += (await self.js.consumer_info(queue.stream, wire.consumer_of_level(level))).num_ack_pending
            except ApiError as exc:
                if exc.err_code not in NOT_FOUND_CODES:
                    raise
        return max(total - in_flight, 0), delayed, in_flight

    def consumers(self, name: str, change: int) -> None:
        """Count a consume loop of this process in (+1) or out (-1) of queue ``name``."""
        counts = self.counts(name)
        with counts_lock:
            counts.consumers += change
