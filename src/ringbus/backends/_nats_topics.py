"""Topics and services of the ``nats://`` backend's asyncio core.

Topics: every publication goes to ``<prefix>t.<topic>``, a subject captured by one stream (``retention``
publications kept) and seen by core-NATS subscribers. Ephemeral subscriptions are core subscriptions (a group
is a NATS queue group); a durable group is a durable pull consumer of the stream, received as the queue
``@<group>`` (see :mod:`ringbus.backends._nats_queues`).

Services: a request on ``<prefix>s.<service>`` with an inbox reply subject; a server listens for one request at
a time (``UNSUB <sid> 1``: the server ends the subscription after one message), so a busy server gets no more.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors as nats_errors
from nats.aio.msg import Msg

from ringbus.backends import _nats_wire as wire
from ringbus.backends._nats_js import NOT_FOUND_CODES, STREAM_EXISTS_OTHERWISE
from ringbus.backends._nats_queues import QueueOps
from ringbus.backends._nats_wire import ApiError
from ringbus.bus import TOPIC_HEADER, QueueOptions, topic_matcher
from ringbus.errors import Closed, Empty, PeerGone, RingbusError
from ringbus.message import Message

__all__ = ["TopicOps", "TopicTap", "Listener"]

PUBLISH_CHUNK = 256  # publications in flight at once in publish_many
SUBSCRIBER_BUFFER = 10_000  # messages NATS may hold for a lagging subscriber before it drops (counted)
SERVICE_GROUP = "ringbus"
_json = msgspec.json.encode
_unjson = msgspec.json.decode
_GONE = (nats_errors.BadSubscriptionError, nats_errors.ConnectionClosedError)


class TopicTap:
    """An ephemeral subscription's core-NATS subscriptions; ``dropped`` counts what NATS dropped for lag."""

    def __init__(self) -> None:
        self.subs: list[Any] = []
        self.dropped = 0


class Listener:
    """A service's one-request subscription."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def close(self) -> None:
        try:
            await self._sub.unsubscribe()
        except _GONE:
            pass  # already ended by its one request, or the connection is gone


class TopicOps(QueueOps):
    """publish, subscriptions (ephemeral taps, durable groups) and request/serve, as coroutines. A durable group
    is received as a queue, hence on top of :class:`QueueOps`."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._taps: dict[int, TopicTap] = {}  # by id of a NATS subscription

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats_errors.SlowConsumerError):
            tap = self._taps.get(id(exc.sub))
            if tap is not None:
                tap.dropped += 1
                return
        await super()._on_error(exc)

    async def _before_close(self) -> None:
        for tap in list(self._taps.values()):
            await self.untap(tap)

    # -- topics -----------------------------------------------------------------------------------------------
    async def _topics(self) -> None:
        if self._topics_ready:
            return
        try:
            await self.js.add_stream({"name": self.topic_stream, "subjects": [self.topic_root + ">"],
                                      "retention": "limits", "storage": "file", "max_msgs": self.retention,
                                      "discard": "old", "num_replicas": 1})
        except ApiError as exc:
            if exc.err_code != STREAM_EXISTS_OTHERWISE:
                raise
        self._topics_ready = True

    async def publish(self, topic: str, messages: list[Message]) -> None:
        """Publish on ``topic`` (confirmed by JetStream, so durable groups get it), PUBLISH_CHUNK in flight."""
        await self._topics()
        subject = self.topic_root + topic
        for start in range(0, len(messages), PUBLISH_CHUNK):
            payloads = []
            for message in messages[start:start + PUBLISH_CHUNK]:
                payload = wire.pack(message)
                if len(payload) > self.nc.max_payload:
                    raise ValueError(f"a message of {len(payload)} bytes is over NATS's max_payload "
                                     f"({self.nc.max_payload}) for topics; publish a claim check instead")
                payloads.append(payload)
            results = await asyncio.gather(*(self.js.publish(subject, payload) for payload in payloads),
                                           return_exceptions=True)
            for result in results:
                if isinstance(result, nats_errors.NoRespondersError):
                    self._topics_ready = False
                    raise PeerGone(f"the topic stream {self.topic_stream!r} did not take the publication "
                                   "(no responders); publish again")
                if isinstance(result, BaseException):
                    raise result

    async def tap(self, pattern: str, group: str | None, sink: Callable[[Message], None]) -> TopicTap:
        """An ephemeral subscription: core NATS subscriptions covering ``pattern``; ``sink`` gets each matching
        message on the loop's thread. Members of a ``group`` share messages (a NATS queue group)."""
        subjects, exact = wire.subject_filters(pattern)
        match = None if exact else topic_matcher(pattern)
        root = self.topic_root
        tap = TopicTap()

        async def deliver(msg: Msg) -> None:
            topic = msg.subject[len(root):]
            if match is not None and not match(topic):
                return
            message = wire.unpack(msg.data)
            message.headers[TOPIC_HEADER] = topic
            sink(message)

        for subject in subjects:
            sub = await self.nc.subscribe(root + subject, queue=group or "", cb=deliver,
                                          pending_msgs_limit=SUBSCRIBER_BUFFER)
            tap.subs.append(sub)
            self._taps[id(sub)] = tap
        await self.flush()  # a publication after subscribe() returns must reach us
        return tap

    async def untap(self, tap: TopicTap) -> None:
        for sub in tap.subs:
            self._taps.pop(id(sub), None)
            try:
                await sub.unsubscribe()
            except _GONE:
                pass
        tap.subs.clear()

    async def join(self, pattern: str, group: str, start: str) -> None:
        """Join (or create) durable group ``group``: a durable consumer of the topic stream with the pattern's
        filter; a new one starts after the last publication, or at the first one retained (``earliest``)."""
        await self._topics()
        subjects, _ = wire.subject_filters(pattern)
        consumer = wire.group_consumer(group)
        try:
            info = await self.js.consumer_info(self.topic_stream, consumer)
        except ApiError as exc:
            if exc.err_code not in NOT_FOUND_CODES:
                raise
            await self.js.add_consumer(self.topic_stream, {
                "durable_name": consumer, "description": _json({"pattern": pattern}).decode(),
                "deliver_policy": "all" if start == "earliest" else "new", "ack_policy": "explicit",
                "ack_wait": int(self.remember(f"@{group}", QueueOptions(), group, pattern).ack_wait * 1e9),
                "max_deliver": -1,
                "filter_subject": self.topic_root + wire.one_filter(subjects), "replay_policy": "instant",
                "max_ack_pending": -1, "max_waiting": 512})
        else:
            held = _unjson((info.config or {}).get("description") or "{}").get("pattern")
            if held != pattern:
                raise ValueError(f"durable group {group!r} is bound to pattern {held!r}, not {pattern!r}")
        await self.declare(f"@{group}.dlq", QueueOptions(), side=True)
        self.remember(f"@{group}", QueueOptions(), group=group, pattern=pattern)

    # -- services ---------------------------------------------------------------------------------------------
    def _service(self, service: str) -> str:
        return f"{self.prefix}s.{wire.token(service)}"

    async def request(self, service: str, message: Message, timeout: float | None) -> Message:
        """Call ``service``. While no server listens (NATS answers 'no responders' at once) the request is sent
        again, with backoff, until ``timeout``: a server that is busy or starting answers it then."""
        payload = wire.pack(message)
        if len(payload) > self.nc.max_payload:
            raise ValueError(f"a request of {len(payload)} bytes is over NATS's max_payload ({self.nc.max_payload})")
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002
        while True:
            self.check_open()
            left = 3600.0 if deadline is None else deadline - time.monotonic()
            if left <= 0.0:
                raise Empty(f"no reply from service {service!r} within {timeout} s (no server took the request)")
            try:
                reply = await self.nc.request(self._service(service), payload, timeout=left)
            except nats_errors.NoRespondersError:
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
                continue
            except (nats_errors.TimeoutError, asyncio.TimeoutError):
                if deadline is None:
                    continue
                raise Empty(f"no reply from service {service!r} within {timeout} s") from None
            except nats_errors.ConnectionClosedError:
                raise Closed(f"the nats bus at {self.where} is closed") from None
            if reply.headers and wire.H_ERROR in reply.headers:
                raise RingbusError(f"service {service!r} failed: {reply.headers[wire.H_ERROR]}")
            return wire.unpack(reply.data)

    async def listen(self, service: str, sink: Callable[[Message, str], None]) -> Listener:
        """Take the next request of ``service`` (one only); ``sink(request, reply_subject)`` runs on the loop."""

        async def deliver(msg: Msg) -> None:
            sink(wire.unpack(msg.data), msg.reply)

        sub = await self.nc.subscribe(self._service(service), queue=SERVICE_GROUP, cb=deliver)
        await sub.unsubscribe(limit=1)  # UNSUB <sid> 1: the server itself ends it after one request
        return Listener(sub)

    async def respond(self, reply_subject: str, reply: Message | None, error: str | None) -> None:
        if not reply_subject:
            return
        if error is not None:
            text = " ".join(error.split())[:4000]  # one header line
            await self.nc.publish(reply_subject, b"", headers={wire.H_ERROR: text})
            return
        assert reply is not None
        await self.nc.publish(reply_subject, wire.pack(reply))
