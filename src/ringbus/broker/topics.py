"""Topics: publish to every matching subscription, ephemeral or durable, and retain for replay.

Shared by ``memory://`` and the embedded broker; like :class:`QueueBook`, no I/O
and one caller at a time.

- An *ephemeral* subscriber sees what is published while it exists. The
  backend delivers to it without waiting; a subscriber that cannot take more
  (full buffer, or a ZeroMQ peer at its high-water mark) loses the message and
  it is counted - the publisher never stalls on a slow subscriber.
- A *durable* subscription group is a queue named ``@<group>`` bound to the
  pattern: every matching publication is enqueued there, its members compete
  for it and ack it, and it lags on disk (broker) while they are away.
- Every publication is retained for ``retention_seconds`` / up to
  ``retention_bytes`` so that a new durable group with ``start="earliest"``
  can replay what the topic still holds.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import msgspec

from ringbus.bus import TOPIC_HEADER, QueueOptions, check_topic, topic_matcher
from ringbus.message import Message

if TYPE_CHECKING:
    from ringbus.broker.queues import QueueBook

__all__ = ["TopicBook", "Subscriber", "group_queue"]

_replace = msgspec.structs.replace


def group_queue(group: str) -> str:
    """The queue that holds a durable subscription group's messages."""
    return f"@{group}"


class Subscriber(Protocol):
    """An ephemeral subscriber as the backend delivers to it."""

    def deliver(self, message: Message) -> bool:
        """Hand over ``message`` without blocking; False if it had to be dropped."""


class _Member:
    __slots__ = ("pattern", "group", "matches", "subscriber")

    def __init__(self, pattern: str, group: str | None, subscriber: Subscriber) -> None:
        self.pattern = pattern
        self.group = group
        self.matches = topic_matcher(pattern)
        self.subscriber = subscriber


class TopicBook:
    """Subscriptions and retained publications of one broker or memory namespace."""

    def __init__(self, queues: QueueBook, *, retention_seconds: float = 24 * 3600.0,
                 retention_bytes: int = 64 * 1024 * 1024, clock: Callable[[], float] = time.time,
                 on_publish: Callable[[int, Message, list[bytes | memoryview] | None], None] | None = None,
                 encode: Callable[[Message], list[bytes | memoryview]] | None = None) -> None:
        self._queues = queues
        self._clock = clock
        self._on_publish = on_publish  # durable backends write the publication down
        self._encode = encode  # the broker encodes a publication once, for its log and every group's queue
        self.retention_seconds = retention_seconds
        self.retention_bytes = retention_bytes
        self._retained: deque[tuple[int, float, str, Message, int]] = deque()  # offset, time, topic, message, size
        self._retained_bytes = 0
        self._offsets = itertools.count()
        self._members: dict[int, _Member] = {}
        self._tokens = itertools.count(1)
        self._round_robin: dict[tuple[str, str], int] = {}  # (pattern, group) -> next member
        self._groups: dict[str, tuple[str, Callable[[str], bool]]] = {}  # durable group -> (pattern, matcher)
        self.published = 0
        self.delivered = 0
        self.dropped = 0

    # -- publishing --------------------------------------------------------------------------------------------
    def publish(self, topic: str, message: Message) -> str:
        """Deliver ``message`` to every subscription matching ``topic``; return its id."""
        check_topic(topic)
        headers = dict(message.headers)
        headers[TOPIC_HEADER] = topic
        message = _replace(message, headers=headers)
        offset = next(self._offsets)
        self.published += 1
        wire = self._encode(message) if self._encode is not None else None
        if self._on_publish is not None:
            self._on_publish(offset, message, wire)
        self._retain(offset, self._clock(), topic, message)
        self._fan_out(topic, message, wire)
        return message.id

    def restore(self, offset: int, published_at: float, message: Message) -> None:
        """Put back a retained publication recovered from the log."""
        topic = str(message.headers.get(TOPIC_HEADER, ""))
        self._offsets = itertools.count(max(offset + 1, next(self._offsets)))
        self._retain(offset, published_at, topic, message)

    def _retain(self, offset: int, at: float, topic: str, message: Message) -> None:
        body = message.body
        size = (body.nbytes if isinstance(body, memoryview) else len(body)) + 128
        self._retained.append((offset, at, topic, message, size))
        self._retained_bytes += size
        self.trim()

    def trim(self) -> int | None:
        """Forget publications past retention; return the oldest retained offset (None if none)."""
        retained = self._retained
        horizon = self._clock() - self.retention_seconds
        while retained and (retained[0][1] < horizon or self._retained_bytes > self.retention_bytes):
            self._retained_bytes -= retained.popleft()[4]
        return retained[0][0] if retained else None

    def _fan_out(self, topic: str, message: Message, wire: list[bytes | memoryview] | None) -> None:
        groups_seen: dict[tuple[str, str], list[_Member]] = {}
        for member in self._members.values():
            if not member.matches(topic):
                continue
            if member.group is None:
                self._deliver(member, message)
            else:
                groups_seen.setdefault((member.pattern, member.group), []).append(member)
        for group_key, members in groups_seen.items():
            turn = self._round_robin.get(group_key, 0)
            self._round_robin[group_key] = turn + 1
            self._deliver(members[turn % len(members)], message)
        for group, (_, matches) in self._groups.items():
            if matches(topic):
                self._queues.send(group_queue(group), message, wire=wire)
                self.delivered += 1  # into the group's queue; its members take it from there

    def _deliver(self, member: _Member, message: Message) -> None:
        if member.subscriber.deliver(message):
            self.delivered += 1
        else:
            self.dropped += 1

    # -- subscribing -------------------------------------------------------------------------------------------
    def add(self, pattern: str, group: str | None, subscriber: Subscriber) -> int:
        """Attach an ephemeral subscriber (members of one group share messages); return its token."""
        member = _Member(pattern, group, subscriber)
        token = next(self._tokens)
        self._members[token] = member
        return token

    def remove(self, token: int) -> None:
        self._members.pop(token, None)

    def durable_group(self, pattern: str, group: str, start: str = "latest",
                      options: QueueOptions | None = None) -> tuple[str, bool]:
        """Create (or find) the durable group's queue bound to ``pattern``; return its name and whether it is new.

        A new group with ``start="earliest"`` first receives the retained publications matching the pattern.
        Raises ValueError if the group exists with another pattern.
        """
        matches = topic_matcher(pattern)
        held = self._groups.get(group)
        if held is not None and held[0] != pattern:
            raise ValueError(f"subscription group {group!r} is bound to {held[0]!r}, not {pattern!r}; "
                             "use another group name for another pattern")
        name = group_queue(group)
        _, new = self._queues.declare(name, options or QueueOptions(), binding=pattern)
        self._groups[group] = (pattern, matches)
        if new and start == "earliest":
            for _, _, topic, message, _ in list(self._retained):
                if matches(topic):
                    self._queues.send(name, message)
        return name, new

    def bind_recovered(self, group: str, pattern: str) -> None:
        """After recovery: the group's queue exists again; route new publications to it."""
        self._groups[group] = (pattern, topic_matcher(pattern))

    def groups(self) -> dict[str, str]:
        return {group: pattern for group, (pattern, _) in self._groups.items()}

    def stats(self) -> dict[str, int]:
        return {"published": self.published, "delivered": self.delivered, "dropped": self.dropped,
                "subscribers": len(self._members), "groups": len(self._groups), "retained": len(self._retained),
                "retained_bytes": self._retained_bytes}
