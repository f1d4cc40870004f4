"""The ``Bus`` contract every backend implements, and ``connect(url)`` that picks the backend.

One contract, many engines: ``memory://`` (threads of one process),
``tcp://`` / ``ipc://`` (the embedded broker), later Redis, RabbitMQ, NATS and
MQTT. Patterns are written against this class only. A backend that cannot
give a feature raises :class:`ringbus.Unsupported` naming it - never a silent
no-op. The tests in ``tests/contract/`` hold every backend to this page.
"""

from __future__ import annotations

import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlsplit

from ringbus.errors import Closed, Unsupported
from ringbus.message import HeaderValue, Message

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self  # typing has it from 3.11

__all__ = [
    "Bus",
    "QueueOptions",
    "QueueStats",
    "Subscription",
    "Handler",
    "connect",
    "topic_matcher",
    "TOPIC_HEADER",
]

Overflow = Literal["reject", "drop_oldest"]
Start = Literal["latest", "earliest"]
Handler = Callable[[Message], "bytes | bytearray | memoryview | Message"]

# Where a subscriber finds the topic a message was published on.
TOPIC_HEADER = "ringbus-topic"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")
_TOPIC = re.compile(r"^[A-Za-z0-9_\-:]+(\.[A-Za-z0-9_\-:]+)*$")
_PATTERN_WORD = re.compile(r"^([A-Za-z0-9_\-:]+|\*|#)$")


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a valid queue or service name, else raise ValueError naming it."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"{kind} name must be 1-200 characters of letters, digits and _ . : - "
            f"(not starting with . : -), got {name!r}"
        )
    return name


def check_topic(topic: object) -> str:
    """Return ``topic`` if it is dot-separated words (no wildcards), else raise ValueError."""
    if not isinstance(topic, str) or len(topic) > 200 or not _TOPIC.match(topic):
        raise ValueError("topic must be dot-separated words of letters, digits and _ - : (no wildcards), "
                         f"got {topic!r}")
    return topic


def topic_matcher(pattern: str) -> Callable[[str], bool]:
    """Compile a subscription pattern: ``*`` matches one word, ``#`` zero or more words.

    ``order.*`` matches ``order.placed`` but not ``order.placed.eu``;
    ``order.#`` matches ``order``, ``order.placed`` and ``order.placed.eu``.
    """
    if not isinstance(pattern, str) or not pattern or len(pattern) > 200:
        raise ValueError(f"subscription pattern must be a non-empty string of at most 200 characters, got {pattern!r}")
    words = pattern.split(".")
    parts = []
    for i, word in enumerate(words):
        if not _PATTERN_WORD.match(word):
            raise ValueError(f"subscription pattern {pattern!r}: word {word!r} is not a word, '*' or '#'")
        if word == "#":
            # '#' also swallows the dot that joins it to its neighbour, so 'a.#' matches 'a'.
            parts.append(r"(?:\.[^.]+)*" if i else r"(?:[^.]+(?:\.[^.]+)*)?")
        else:
            text = r"[^.]+" if word == "*" else re.escape(word)
            parts.append(("\\." if i else "") + text)
    regex = re.compile("".join(parts) + r"\Z")
    if words[0] == "#" and len(words) > 1:
        # '#.b' matches 'b' too: the leading '#' may be empty, taking the following dot with it.
        rest = topic_matcher(".".join(words[1:]))
        return lambda topic: bool(regex.match(topic)) or rest(topic)
    return lambda topic: bool(regex.match(topic))


_HEADER_VALUE_TYPES = (str, int, float, bool, type(None))


def check_headers(headers: object) -> dict[str, HeaderValue]:
    """Return ``headers`` if it is a dict of str to str, int, float, bool or None; else raise TypeError naming it."""
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict, not {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, got {name!r}")
        if not isinstance(value, _HEADER_VALUE_TYPES):
            raise TypeError(f"header {name!r} must be a str, int, float, bool or None, not {type(value).__name__}")
    return headers


@overload
def check_seconds(name: str, value: float, *, allow_zero: bool = True) -> float: ...
@overload
def check_seconds(name: str, value: None, *, allow_zero: bool = True) -> None: ...
@overload
def check_seconds(name: str, value: float | None, *, allow_zero: bool = True) -> float | None: ...
def check_seconds(name: str, value: float | None, *, allow_zero: bool = True) -> float | None:
    """Return ``value`` as a float if it is None or finite and non-negative (or positive), else raise ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0.0 or (seconds == 0.0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number of seconds {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return seconds


@dataclass(frozen=True)
class QueueOptions:
    """What ``declare_queue`` fixes about a queue (see :meth:`Bus.declare_queue`)."""

    durable: bool = True
    max_length: int | None = None
    overflow: Overflow = "reject"
    dead_letter: str | None = None
    max_attempts: int = 5
    visibility_timeout: float = 30.0
    ordered_by_key: bool = False
    ttl: float | None = None
    dedup_window: float = 300.0

    def __post_init__(self) -> None:
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or self.max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {self.max_length!r}")
        if self.overflow not in ("reject", "drop_oldest"):
            raise ValueError(f"overflow must be 'reject' or 'drop_oldest', got {self.overflow!r}")
        if self.dead_letter is not None:
            check_name("dead_letter queue", self.dead_letter)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        check_seconds("visibility_timeout", self.visibility_timeout, allow_zero=False)
        check_seconds("ttl", self.ttl, allow_zero=False)
        check_seconds("dedup_window", self.dedup_window)

    def dead_letter_queue(self, name: str) -> str:
        """The queue this queue's dead letters go to: ``dead_letter``, or ``<name>.dlq`` by default."""
        return self.dead_letter or f"{name}.dlq"


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of one queue (:meth:`Bus.queue_stats`)."""

    name: str
    depth: int  # messages waiting: ready + delayed
    ready: int  # deliverable now
    delayed: int  # waiting for their delay (or a nack's backoff) to pass
    in_flight: int  # delivered, not yet settled
    consumers: int  # receivers attached now
    sent: int  # accepted since the queue was declared (or the broker started)
    acked: int
    redelivered: int  # deliveries after the first (nack, lease expired, consumer gone)
    dead_lettered: int  # moved to the dead-letter queue (rejected, max_attempts, expired, overflow)
    expired: int  # of those, because their ttl passed
    deduplicated: int  # sends dropped as repeats of a dedup_id within the window
    send_rate: float  # messages per second over the last few seconds
    ack_rate: float
    # Optional: None where a backend does not measure them (docs/observability.md).
    delivered: int | None = None  # deliveries, redeliveries included
    nacked: int | None = None  # nacks, requeued or dead-lettered
    # {"queue_wait" | "processing" | "end_to_end": {"count", "p50", "p90", "p99", "max"}} in ms, last 30-60 s
    latency_ms: Mapping[str, Mapping[str, float]] | None = None


class Subscription(ABC):
    """Messages published on topics that match a pattern; iterate it, or call :meth:`receive`.

    Ephemeral subscriptions (``durable=False``) see only what is published
    while they exist, and drop (counting in :attr:`dropped`) what they cannot
    hold; ack is a no-op for them. Durable subscriptions are a named group's
    queue: what is published while every member is away waits for them, and
    each message must be acked. The topic a message was published on is in
    ``message.headers[ringbus.bus.TOPIC_HEADER]``.
    """

    pattern: str
    group: str | None
    durable: bool

    @abstractmethod
    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message, or None if none came within ``timeout`` seconds (None waits for ever)."""

    @property
    @abstractmethod
    def dropped(self) -> int:
        """Messages this subscriber lost because it fell behind (ephemeral subscriptions only; 0 for durable)."""

    @abstractmethod
    def close(self) -> None:
        """Stop receiving; idempotent. A durable group's queue stays and keeps collecting messages."""

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                message = self.receive(timeout=None)
            except Closed:
                return
            if message is None:  # pragma: no cover - receive(None) only returns None when closed
                return
            yield message

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Bus(ABC):
    """A connection to a message broker: queues, topics and services. See the module docstring."""

    url: str

    # -- queues -------------------------------------------------------------------------------------------------
    @abstractmethod
    def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        max_length: int | None = None,
        overflow: Overflow = "reject",
        dead_letter: str | None = None,
        max_attempts: int = 5,
        visibility_timeout: float = 30.0,
        ordered_by_key: bool = False,
        ttl: float | None = None,
        dedup_window: float = 300.0,
    ) -> None:
        """Create ``name`` if it does not exist; idempotent for the same options.

        Parameters
        ----------
        durable : bool
            Keep its messages on disk (broker backends); a send returns once written under the fsync policy.
        max_length : int or None
            Most messages waiting (ready + delayed); None for no limit (memory grows with the backlog).
        overflow : {"reject", "drop_oldest"}
            When full: refuse the send with :class:`ringbus.Full`, or move the oldest waiting message to the
            dead-letter queue to make room.
        dead_letter : str or None
            Queue for rejected, expired and too-often-delivered messages; default ``<name>.dlq`` (declared with it).
        max_attempts : int
            Deliveries before a message that keeps coming back is dead-lettered.
        visibility_timeout : float
            Seconds a delivered message stays invisible to others; unacked by then, it is delivered again.
        ordered_by_key : bool
            At most one unsettled message per ``key``, delivered in send order (FIFO message groups).
        ttl : float or None
            Default seconds a message may wait before it expires to the dead-letter queue.
        dedup_window : float
            Seconds during which a repeated ``dedup_id`` is accepted but not enqueued again.

        Raises
        ------
        ValueError
            If an option is invalid, or the queue exists with different options (naming them).
        """

    @abstractmethod
    def send(
        self,
        queue: str,
        body: bytes | bytearray | memoryview | Message,
        *,
        key: str | None = None,
        priority: int | None = None,
        headers: dict[str, HeaderValue] | None = None,
        delay: float | None = None,
        ttl: float | None = None,
        dedup_id: str | None = None,
    ) -> str:
        """Put one message on ``queue``; return its id once the broker holds it (on disk, if durable).

        ``body`` is bytes-like, or a :class:`Message` whose fields are used (keyword arguments given here override
        them). Higher ``priority`` is delivered first, FIFO within a priority.

        Raises
        ------
        ringbus.NotFound
            If the queue was not declared.
        ringbus.Full
            If the queue is at ``max_length`` with ``overflow="reject"``.
        TypeError, ValueError
            If the body or an option is of the wrong type or out of range.
        """

    def send_many(self, queue: str, bodies: Iterable[bytes | bytearray | memoryview | Message]) -> list[str]:
        """Send several messages in order; return their ids. Backends override this with one round trip."""
        return [self.send(queue, body) for body in bodies]

    @abstractmethod
    def receive(self, queue: str, timeout: float | None = None) -> Message | None:
        """Take the next message from ``queue``, or None if none came within ``timeout`` seconds.

        The message is in flight until settled with ``ack``, ``nack`` or ``reject``.
        """

    @abstractmethod
    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> Generator[Message, None, None]:
        """Iterate messages of ``queue`` with up to ``prefetch`` unsettled at once.

        The iterator ends when no message came for ``timeout`` seconds (None: never), or the bus is closed.
        ``close()`` it to stop early: what was prefetched and not handed out goes back, no attempt counted.
        """

    @abstractmethod
    def queue_stats(self, queue: str) -> QueueStats:
        """Depth, in-flight, dead letters, consumers and rates of ``queue``."""

    @abstractmethod
    def queues(self) -> list[str]:
        """Names of the declared queues."""

    # -- topics -------------------------------------------------------------------------------------------------
    @abstractmethod
    def publish(self, topic: str, body: bytes | bytearray | memoryview | Message, *,
                headers: dict[str, HeaderValue] | None = None, key: str | None = None) -> str:
        """Publish ``body`` on ``topic`` (dot-separated words) to every matching subscription; return its id."""

    def publish_many(self, topic: str, bodies: Iterable[bytes | bytearray | memoryview | Message]) -> list[str]:
        """Publish several messages on ``topic`` in order; return their ids. Backends override this with one
        round trip (and, on the broker, one log commit)."""
        return [self.publish(topic, body) for body in bodies]

    @abstractmethod
    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscription:
        """Receive what is published on topics matching ``pattern`` (``*`` one word, ``#`` any words).

        Members of one ``group`` share its messages; each group (and each subscriber without a group) gets every
        one. ``durable=True`` needs a group: the group's messages wait while it is away and must be acked.
        ``start="earliest"`` (durable only) first replays what the topic still retains.
        """

    # -- services -----------------------------------------------------------------------------------------------
    @abstractmethod
    def request(self, service: str, body: bytes | bytearray | memoryview | Message, *,
                timeout: float | None = 5.0) -> Message:
        """Call ``service`` and return its reply.

        Raises
        ------
        ringbus.Empty
            If no reply came within ``timeout`` seconds.
        ringbus.RingbusError
            If the handler raised (the message names its error).
        """

    @abstractmethod
    def serve(self, service: str, handler: Handler, *, stop: threading.Event | None = None) -> None:
        """Answer requests to ``service`` with ``handler(message)`` until ``stop`` is set or the bus closes.

        Several servers of one service share its requests. A handler exception is sent back to the caller as a
        :class:`ringbus.RingbusError` and logged here.
        """

    # -- lifetime -----------------------------------------------------------------------------------------------
    @abstractmethod
    def close(self) -> None:
        """Release the connection; unsettled messages go back to their queues. Idempotent."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` was called."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url!r}{' closed' if self.closed else ''}>"


def connect(url: str = "memory://", **options: Any) -> Bus:
    """Open a :class:`Bus` on the backend ``url`` names.

    ``memory://[name]``: queues in this process, shared by every connection to the same name.
    ``tcp://host:port`` or ``ipc:///path``: the embedded broker (``ringbus broker``).
    ``redis://host:port/db?prefix=name:`` (or ``rediss://``): Redis (docs/backends.md).
    ``amqp://user:pass@host:port/vhost?prefix=name.`` (or ``amqps://``): RabbitMQ (docs/backends.md).
    ``mqtt://host:port?prefix=name/``: publish/subscribe on an MQTT 5 broker; queues raise Unsupported
    (docs/backends.md).
    ``nats://host:port?prefix=name.``: NATS with JetStream (docs/backends.md).
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str such as 'memory://' or 'tcp://127.0.0.1:5555', not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from ringbus.backends.memory import MemoryBus

        return MemoryBus(url, **options)
    if scheme in ("tcp", "ipc"):
        from ringbus.backends.broker import BrokerBus

        return BrokerBus(url, **options)
    if scheme in ("redis", "rediss"):
        try:
            from ringbus.backends.redis import RedisBus
        except ImportError as exc:
            raise Unsupported(f"the redis:// backend needs redis-py: pip install 'ringbus[redis]' ({exc})") from None

        return RedisBus(url, **options)
    if scheme in ("amqp", "amqps"):
        from ringbus.backends.amqp import AmqpBus

        return AmqpBus(url, **options)
    if scheme == "mqtt":
        try:
            from ringbus.backends.mqtt import MqttBus
        except ImportError as exc:
            raise Unsupported(f"the mqtt:// backend needs paho-mqtt: pip install 'ringbus[mqtt]' ({exc})") from None

        return MqttBus(url, **options)
    if scheme == "nats":
        from ringbus.backends.nats import NatsBus

        return NatsBus(url, **options)
    raise ValueError(f"unknown bus url {url!r}: expected memory://, tcp://host:port, ipc:///path, redis://, "
                     "amqp://, nats:// or mqtt://")
