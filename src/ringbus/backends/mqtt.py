"""``mqtt://``: publish/subscribe on an MQTT 5 broker (Mosquitto) with paho-mqtt, QoS 1; no queues.

The IoT case: devices publish readings, services subscribe. How ringbus topics and messages look on MQTT is in
:mod:`ringbus.backends._mqtt_wire`; the feature table and the limits are in docs/backends.md ("MQTT").

- ``publish`` sends at QoS 1 and returns after the broker's PUBACK (or raises :class:`ringbus.PeerGone` when none
  came within ``timeout``; paho keeps such a message queued and sends it when the connection is back, so it may
  still arrive: at-least-once).
- ``subscribe(durable=False)``: a connection of its own with a clean session; with a ``group``, a shared
  subscription ``$share/<group>/<filter>`` (the broker deals each message to one member).
- ``subscribe(group=..., durable=True)``: a persistent session (clean start off, session expiry) whose client id
  is derived from the group, acked by hand: what is published while the group is away waits in the broker, and an
  unacked message is delivered again (MQTT's DUP flag, ``attempts`` 1) when the group comes back. One live member
  per group: MQTT has one session per client id.
- Every queue method and request/reply raise :class:`ringbus.Unsupported` (MQTT has no queues); so does
  ``start="earliest"`` (a broker retains the last message of a topic, not its history).
- Every connection reconnects by itself with doubling backoff (``RECONNECT_MIN`` to ``RECONNECT_MAX`` seconds);
  an ephemeral subscription subscribes again when it is back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from ringbus.backends._common import NO_SETTLE, as_message, check_subscription
from ringbus.backends._mqtt_wire import (
    check_prefix,
    mqtt_filter,
    mqtt_topic,
    properties,
    publish_properties,
    ringbus_topic,
    to_message,
)
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
    topic_matcher,
)
from ringbus.errors import Closed, Full, PeerGone, RingbusError, Unsupported
from ringbus.message import HeaderValue, Message, new_id

__all__ = ["UNSUPPORTED", "MqttBus"]

log = logging.getLogger("ringbus.backends.mqtt")

DEFAULT_PORT = 1883
QOS = 1
SUBSCRIBER_BUFFER = 10_000  # messages an ephemeral subscriber may lag before it drops
PUBLISH_BACKLOG = 10_000  # publications waiting for their PUBACK (or for the connection to come back)
RECONNECT_MIN, RECONNECT_MAX = 1, 30  # seconds between reconnection attempts: doubling, bounded
NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5 session expiry interval meaning "never"
FLUSH_FILTER = "ringbus/flush"  # unsubscribed (never subscribed) to learn that the broker read what went before

_QUEUES = ("queues (declare_queue, send, send_many, receive, consume, queue_stats): MQTT has topics only - no "
           "queue that holds a message until one consumer acks it, no leases, attempts, priorities, delays or "
           "dead letters; use amqp:// or nats:// (or redis://) for queues and keep mqtt:// for what devices "
           "publish")
UNSUPPORTED = {
    feature: _QUEUES for feature in ("queues", "priority", "delay", "ttl", "dedup", "ordered_by_key", "max_length")
} | {
    "request_reply": "request/reply (request, serve): MQTT 5 response topics address one client, but there is no "
                     "service queue that shares requests among servers and holds them until one answers; use "
                     "amqp:// or nats://",
    "replay": "replay (start='earliest'): an MQTT broker retains at most the last message of each topic (retained "
              "messages), not the history the group should replay; use redis:// or nats:// for replay",
}


def _unsupported(feature: str) -> Unsupported:
    return Unsupported(f"the mqtt:// backend does not support {UNSUPPORTED[feature]}")


@dataclass(frozen=True)
class _Server:
    """Where and how every connection of one bus connects."""

    host: str
    port: int
    username: str | None
    password: str | None
    keepalive: int
    timeout: float

    def __str__(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


# Durable groups with a live session in this process: a second member would take the session over, and the two
# would then take it from each other at every reconnect (Mosquitto closes the older one without a reason code).
_live_groups: set[tuple[str, int, str]] = set()
_live_groups_lock = threading.Lock()


class _Link:
    """One MQTT 5 connection and its paho network thread: connects, waits for CONNACK, reconnects with backoff.

    ``epoch`` grows at every connect and disconnect, so a delivery can tell whether the connection it came on is
    still the current one (a PUBACK only means something on the connection the message came on).
    """

    def __init__(self, server: _Server, client_id: str, *, clean_start: bool, session_expiry: int,
                 manual_ack: bool = False, receive_maximum: int | None = None,
                 on_message: Callable[[paho.Client, Any, paho.MQTTMessage], None] | None = None,
                 on_connected: Callable[[paho.Client, bool], None] | None = None) -> None:
        self.server = server
        self.client_id = client_id
        self.epoch = 0
        self._manual_ack = manual_ack
        self._closing = False
        self._connected = threading.Event()
        self._refused: str | None = None
        self._on_connected = on_connected
        self._puback_errors: dict[int, str] = {}
        client = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5,
                                           manual_ack=manual_ack)
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        client.max_queued_messages_set(PUBLISH_BACKLOG)
        if server.username is not None:
            client.username_pw_set(server.username, server.password)
        client.on_connect = self._connect_done
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        if on_message is not None:
            client.on_message = on_message
        self._clean_start = clean_start
        self._properties = props = properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry
        if receive_maximum is not None:
            props.ReceiveMaximum = receive_maximum

    def start(self) -> _Link:
        """Connect and start the network thread; return once the broker accepted the connection."""
        server, client, client_id = self.server, self.client, self.client_id
        try:
            client.connect(server.host, server.port, server.keepalive, clean_start=self._clean_start,
                           properties=self._properties)
        except OSError as exc:
            raise PeerGone(f"no MQTT broker answers at {server} ({exc}); start one (mosquitto -d)") from exc
        client.loop_start()
        if not self._connected.wait(server.timeout) or self._refused is not None:
            self.close()
            why = self._refused or f"no CONNACK within {server.timeout:g} s"
            raise PeerGone(f"the MQTT broker at {server} refused client {client_id!r}: {why}")
        return self

    def _connect_done(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            self._connected.set()
            log.warning("the MQTT broker at %s refused client %r: %s", self.server, self.client_id, reason)
            return
        self.epoch += 1
        if self.epoch > 1:
            log.info("client %r reconnected to %s (session present: %s)", self.client_id, self.server,
                     flags.session_present)
        if self._on_connected is not None:
            self._on_connected(client, bool(flags.session_present))
        self._connected.set()

    def _disconnected(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.epoch += 1
        self._connected.clear()
        if not self._closing:
            log.warning("client %r lost its connection to %s (%s); reconnecting with backoff (%d to %d s)",
                        self.client_id, self.server, reason, RECONNECT_MIN, RECONNECT_MAX)

    def _published(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if reason.is_failure:  # MQTT 5 PUBACK with an error (not authorized, quota exceeded, ...)
            self._puback_errors[mid] = str(reason)

    def publish(self, topic: str, message: Message) -> paho.MQTTMessageInfo:
        body = message.body
        payload = body if isinstance(body, (bytes, bytearray)) else bytes(body)
        return self.client.publish(topic, payload, qos=QOS, properties=publish_properties(message))

    def confirm(self, info: paho.MQTTMessageInfo, what: str) -> None:
        """Wait for the PUBACK of ``info``; raise if none came within the timeout or the broker refused it."""
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise Full(f"{what}: {PUBLISH_BACKLOG} publications already wait for the MQTT broker at "
                       f"{self.server} (the connection is down or slow)")
        if info.rc == paho.MQTT_ERR_NO_CONN:
            info.rc = paho.MQTT_ERR_SUCCESS  # paho keeps the message and sends it once the connection is back
        elif info.rc != paho.MQTT_ERR_SUCCESS:
            raise PeerGone(f"{what}: paho could not send it to {self.server}: {paho.error_string(info.rc)}")
        info.wait_for_publish(self.server.timeout)
        if not info.is_published():
            raise PeerGone(f"{what}: no PUBACK from the MQTT broker at {self.server} within "
                           f"{self.server.timeout:g} s; paho keeps the message and sends it if the connection comes "
                           "back, so it may still be delivered")
        refused = self._puback_errors.pop(info.mid, None)
        if refused is not None:
            raise RingbusError(f"{what}: the MQTT broker at {self.server} refused it: {refused}")

    def flush(self) -> None:
        """Return once the broker has read everything sent so far (or after the timeout).

        A PUBACK has no answer, and closing the socket right after it may reset the connection before the broker
        read it (then it delivers the message again). The broker answers an UNSUBSCRIBE after what came before it.
        """
        if not self._connected.is_set():
            return
        answered = threading.Event()
        self.client.on_unsubscribe = lambda *args: answered.set()  # this link unsubscribes nothing else
        rc, _ = self.client.unsubscribe(FLUSH_FILTER)
        if rc == paho.MQTT_ERR_SUCCESS:
            answered.wait(self.server.timeout)

    def close(self) -> None:
        if self._manual_ack:
            self.flush()  # the acks sent last must reach the broker
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()


class _Delivery:
    """The settle handle of a durable group's message: ack is the PUBACK, sent when the application says so."""

    __slots__ = ("done", "epoch", "mid", "qos", "sub")

    def __init__(self, sub: _MqttSubscription, mid: int, qos: int, epoch: int) -> None:
        self.sub = sub
        self.mid = mid
        self.qos = qos
        self.epoch = epoch
        self.done = False

    def _settle(self, action: str) -> None:
        where = f"message {self.mid} of durable group {self.sub.group!r}"
        if self.done:
            raise RingbusError(f"cannot {action} {where}: already settled")
        if self.sub.closed:
            raise Closed(f"cannot {action} {where}: the subscription is closed (the broker delivers it again when "
                         "the group subscribes again)")
        if self.epoch != self.sub.link.epoch:
            raise RingbusError(f"cannot {action} {where}: the connection it came on was lost (the broker delivers "
                               "it again on the new one)")
        self.done = True

    def ack(self, message: Message) -> None:
        self._settle("ack")
        self.sub.link.client.ack(self.mid, self.qos)

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        self._settle("nack")
        if requeue:
            self.sub.requeue(message, self, delay)
        else:
            self.sub.link.client.ack(self.mid, self.qos)  # dropped: MQTT has no dead-letter queue

    def reject(self, message: Message) -> None:
        raise Unsupported("the mqtt:// backend does not support reject (dead letters): MQTT has no dead-letter "
                          "queue; ack the message to drop it, or use amqp:// / nats:// / redis://")


class _MqttSubscription(Subscription):
    def __init__(self, bus: MqttBus, pattern: str, group: str | None, durable: bool) -> None:
        self.pattern = pattern
        self.group = group
        self.durable = durable
        self._bus = bus
        self._prefix = bus._prefix
        self._match = topic_matcher(pattern)
        self._cond = threading.Condition()
        self._buffer: deque[Message] = deque()
        self._delayed: list[tuple[float, int, Message]] = []  # nacked with a delay: (due, seq, message)
        self._seq = itertools.count()
        self._dropped = 0
        self._closed = False
        self._suback = threading.Event()
        self._suback_error: str | None = None
        self._suback_mid: int | None = None
        mqtt_pattern = mqtt_filter(bus._prefix, pattern)
        # An ephemeral group shares one subscription among its members (MQTT 5 shared subscription).
        self._filter = f"$share/{group}/{mqtt_pattern}" if group is not None and not durable else mqtt_pattern
        self._group_key: tuple[str, int, str] | None = None
        if durable:
            assert group is not None
            client_id = bus.group_client_id(group)
            self._group_key = (bus._server.host, bus._server.port, client_id)
            with _live_groups_lock:
                if self._group_key in _live_groups:
                    raise Unsupported(f"the mqtt:// backend does not support several live members of durable group "
                                      f"{group!r}: MQTT keeps one session per client id, and a second member takes "
                                      "it over; close the first, or use an ephemeral group (shared subscription)")
                _live_groups.add(self._group_key)
        try:
            self.link = _Link(bus._server, client_id if durable else f"ringbus-{new_id()[:16]}",
                              clean_start=not durable, session_expiry=bus._session_expiry if durable else 0,
                              manual_ack=durable, receive_maximum=bus._inflight if durable else None,
                              on_message=self._arrived, on_connected=self._subscribe)
            self.link.client.on_subscribe = self._subscribed
            self.link.start()
            if not self._suback.wait(bus._server.timeout) or self._suback_error is not None:
                self.link.close()
                why = self._suback_error or f"no SUBACK within {bus._server.timeout:g} s"
                raise PeerGone(f"the MQTT broker at {bus._server} refused the subscription {self._filter!r}: {why}")
        except BaseException:
            self._release_group()
            raise

    # -- paho's network thread ------------------------------------------------------------------------------------
    def _subscribe(self, client: paho.Client, session_present: bool) -> None:
        # Again at every (re)connect: a clean session lost its subscription, a persistent one keeps it (harmless).
        # Retained messages are not sent: a subscription sees what is published while it exists.
        options = SubscribeOptions(qos=QOS, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        self._suback_mid = client.subscribe(self._filter, options=options)[1]

    def _subscribed(self, client: paho.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        if mid != self._suback_mid:
            return
        failed = [str(reason) for reason in reasons if reason.is_failure]
        if failed:
            self._suback_error = ", ".join(failed)
            log.error("the MQTT broker at %s refused subscription %r: %s", self._bus._server, self._filter,
                      self._suback_error)
        self._suback.set()

    def _arrived(self, client: paho.Client, userdata: Any, raw: paho.MQTTMessage) -> None:
        topic = ringbus_topic(self._prefix, raw.topic)
        if topic is None or not self._match(topic):  # the MQTT filter over-matches a '#' inside a pattern
            if self.durable:
                client.ack(raw.mid, raw.qos)
            return
        message = to_message(topic, raw.payload, raw.properties, raw.dup)
        with self._cond:
            if self.durable:
                message._settle = _Delivery(self, raw.mid, raw.qos, self.link.epoch)
            elif len(self._buffer) >= SUBSCRIBER_BUFFER:
                self._dropped += 1
                return
            else:
                message._settle = NO_SETTLE
            self._buffer.append(message)
            self._cond.notify()

    # -- the application's side -----------------------------------------------------------------------------------
    def requeue(self, message: Message, delivery: _Delivery, delay: float | None) -> None:
        """A nacked message of a durable group: delivered again by this subscription (still unacked at the
        broker, so it also comes back if this process dies)."""
        again = msgspec.structs.replace(message, attempts=message.attempts + 1)
        again._settle = _Delivery(self, delivery.mid, delivery.qos, delivery.epoch)
        with self._cond:
            if delay:
                heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), again))
            else:
                self._buffer.append(again)
            self._cond.notify()

    @property
    def closed(self) -> bool:
        return self._closed or self._bus._closed

    def receive(self, timeout: float | None = None) -> Message | None:
        timeout = check_seconds("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed:
                    raise Closed(f"subscription {self.pattern!r} is closed")
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self._buffer.append(heapq.heappop(self._delayed)[2])
                if self._buffer:
                    return self._buffer.popleft()
                waits = [t - now for t in (deadline, self._delayed[0][0] if self._delayed else None) if t is not None]
                if deadline is not None and deadline <= now:
                    return None
                self._cond.wait(min(waits) if waits else None)

    @property
    def dropped(self) -> int:
        return self._dropped

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        try:
            self.link.close()  # a durable group's session stays: unacked and later messages wait in the broker
        finally:
            self._release_group()

    def _release_group(self) -> None:
        if self._group_key is not None:
            with _live_groups_lock:
                _live_groups.discard(self._group_key)
            self._group_key = None


def _parse_url(url: str, options: dict[str, Any]) -> tuple[_Server, dict[str, Any]]:
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise ValueError(f"an MqttBus url starts with mqtt://, got {url!r}")
    settings: dict[str, Any] = {"prefix": "", "session_expiry": None, "keepalive": 30, "timeout": 10.0,
                                "inflight": 64}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in settings:
            raise ValueError(f"unknown option {name!r} in {url!r}: mqtt:// takes {', '.join(sorted(settings))}")
        settings[name] = value if name == "prefix" else float(value) if name == "timeout" else int(value)
    for name, value in options.items():
        if name not in settings:
            raise TypeError(f"MqttBus got an unknown keyword {name!r}; it takes {', '.join(sorted(settings))}")
        settings[name] = value
    for name in ("keepalive", "inflight"):
        value = settings[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise ValueError(f"{name} must be an int from 1 to 65535, got {value!r}")
    expiry = settings["session_expiry"]
    if expiry is not None and (isinstance(expiry, bool) or not isinstance(expiry, int)
                               or not 0 <= expiry < NEVER_EXPIRES):
        raise ValueError(f"session_expiry must be None (never) or whole seconds from 0 to {NEVER_EXPIRES - 1}, "
                         f"got {expiry!r}")
    settings["prefix"] = check_prefix(settings["prefix"])
    timeout = check_seconds("timeout", settings["timeout"], allow_zero=False)
    server = _Server(parts.hostname or "localhost", parts.port or DEFAULT_PORT,
                     None if parts.username is None else unquote(parts.username),
                     None if parts.password is None else unquote(parts.password),
                     settings["keepalive"], timeout or 10.0)
    return server, settings


class MqttBus(Bus):
    """Publish/subscribe on the MQTT broker at ``mqtt://[user:password@]host:port?prefix=name/``.

    Parameters
    ----------
    url : str
        ``mqtt://`` with these query options (or the same keyword arguments): ``prefix`` starts every MQTT topic of
        this bus (levels ending with '/', default none), so several applications can share one broker;
        ``session_expiry`` is how long (seconds) a durable group's session, with what waits for it, outlives the
        group's last disconnect (default: never); ``inflight`` is how many unacked messages a durable group is
        given at once (MQTT 5 Receive Maximum, default 64); ``keepalive`` (seconds, default 30) and ``timeout``
        (seconds to wait for CONNACK, SUBACK and PUBACK, default 10).
    """

    unsupported_features: frozenset[str] = frozenset(UNSUPPORTED)

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._server, settings = _parse_url(url, options)
        self._prefix: str = settings["prefix"]
        self._session_expiry: int = NEVER_EXPIRES if settings["session_expiry"] is None else settings["session_expiry"]
        self._inflight: int = settings["inflight"]
        self._closed = False
        self._subscriptions: list[_MqttSubscription] = []
        self._link = _Link(self._server, f"ringbus-{new_id()[:16]}", clean_start=True, session_expiry=0).start()

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"bus {self.url!r} is closed")

    def group_client_id(self, group: str) -> str:
        """The MQTT client id of durable ``group``'s session (the prefix keeps applications apart)."""
        return f"ringbus:{self._prefix}{check_name('subscription group', group)}"

    # -- queues and services: not on MQTT -------------------------------------------------------------------------
    def _refuse(self, feature: str) -> NoReturn:
        self._check_open()
        raise _unsupported(feature)

    def declare_queue(self, name: str, *, durable: bool = True, max_length: int | None = None,
                      overflow: Overflow = "reject", dead_letter: str | None = None, max_attempts: int = 5,
                      visibility_timeout: float = 30.0, ordered_by_key: bool = False, ttl: float | None = None,
                      dedup_window: float = 300.0) -> None:
        self._check_open()
        check_name("queue", name)  # bad input is still named as such
        QueueOptions(durable=durable, max_length=max_length, overflow=overflow, dead_letter=dead_letter,
                     max_attempts=max_attempts, visibility_timeout=visibility_timeout, ordered_by_key=ordered_by_key,
                     ttl=ttl, dedup_window=dedup_window)
        self._refuse("queues")

    def send(self, queue: str, body: bytes | bytearray | memoryview | Message, *, key: str | None = None,
             priority: int | None = None, headers: dict[str, HeaderValue] | None = None,
             delay: float | None = None, ttl: float | None = None, dedup_id: str | None = None) -> str:
        self._refuse("queues")

    def send_many(self, queue: str, bodies: Iterable[bytes | bytearray | memoryview | Message]) -> list[str]:
        self._refuse("queues")

    def receive(self, queue: str, timeout: float | None = None) -> Message | None:
        self._refuse("queues")

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> Generator[Message, None, None]:
        self._refuse("queues")

    def queue_stats(self, queue: str) -> QueueStats:
        self._refuse("queues")

    def queues(self) -> list[str]:
        """Always empty: MQTT has no queues."""
        self._check_open()
        return []

    def request(self, service: str, body: bytes | bytearray | memoryview | Message, *,
                timeout: float | None = 5.0) -> Message:
        self._refuse("request_reply")

    def serve(self, service: str, handler: Handler, *, stop: threading.Event | None = None) -> None:
        self._refuse("request_reply")

    # -- topics -----------------------------------------------------------------------------------------------
    def publish(self, topic: str, body: bytes | bytearray | memoryview | Message, *,
                headers: dict[str, HeaderValue] | None = None, key: str | None = None) -> str:
        return self.publish_many(topic, [as_message(body, key=key, headers=headers)])[0]

    def publish_many(self, topic: str, bodies: Iterable[bytes | bytearray | memoryview | Message]) -> list[str]:
        """Publish in order, all in flight at once; return once the broker acknowledged every one."""
        self._check_open()
        name = mqtt_topic(self._prefix, topic)
        messages = [as_message(body) for body in bodies]
        sent = [(message.id, self._link.publish(name, message)) for message in messages]
        for message_id, info in sent:
            self._link.confirm(info, f"publication {message_id} on topic {topic!r}")
        return [message_id for message_id, _ in sent]

    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscription:
        self._check_open()
        mqtt_filter(self._prefix, pattern)  # MQTT's own characters get an error that names them
        check_subscription(pattern, group, durable, start)
        if start == "earliest":
            raise _unsupported("replay")
        subscription = _MqttSubscription(self, pattern, group, durable)
        self._subscriptions = [sub for sub in self._subscriptions if not sub._closed]
        self._subscriptions.append(subscription)
        return subscription

    def drop_group(self, group: str) -> None:
        """End durable ``group``'s session at the broker: its subscription and every message waiting for it go."""
        self._check_open()
        client_id = self.group_client_id(group)
        with _live_groups_lock:
            if (self._server.host, self._server.port, client_id) in _live_groups:
                raise RingbusError(f"durable group {group!r} has a live subscription in this process; close it "
                                   "before dropping the group")
        _Link(self._server, client_id, clean_start=True, session_expiry=0).start().close()

    # -- lifetime ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription.close()
        self._link.close()

    @property
    def closed(self) -> bool:
        return self._closed
