"""Argument checks and message building that every backend shares, so that they all fail the same way."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import msgspec

from ringbus.bus import check_headers, check_name, topic_matcher
from ringbus.errors import Closed
from ringbus.message import HeaderValue, Message

__all__ = ["as_message", "check_prefetch", "check_subscription", "reply_message", "Inbox", "ServiceError", "NO_SETTLE"]

_BYTES_LIKE = (bytes, bytearray, memoryview)
_replace = msgspec.structs.replace


def as_message(body: object, *, key: str | None = None, priority: int | None = None,
               headers: dict[str, HeaderValue] | None = None) -> Message:
    """A Message from a bytes-like body or a Message; keyword fields given override the message's."""
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str or None, not {type(key).__name__}")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if headers is not None:
        check_headers(headers)
    if isinstance(body, Message):
        changes: dict[str, Any] = {}
        if key is not None:
            changes["key"] = key
        if priority is not None:
            changes["priority"] = priority
        if headers is not None:
            changes["headers"] = {**body.headers, **headers}
        message = _replace(body, **changes)  # a copy even without changes: the caller's keeps its settle handle
        check_headers(message.headers)
        message._settle = None
        return message
    if not isinstance(body, _BYTES_LIKE):
        raise TypeError(f"message body must be bytes, bytearray, memoryview or a ringbus.Message, not "
                        f"{type(body).__name__}; use ringbus.Message.of(value) to serialize other values")
    return Message(body, key=key, priority=0 if priority is None else priority,
                   headers={} if headers is None else headers)


def check_prefetch(prefetch: object) -> int:
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
        raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
    return prefetch


def check_subscription(pattern: str, group: str | None, durable: bool, start: str) -> None:
    topic_matcher(pattern)
    if group is not None:
        check_name("subscription group", group)
    if start not in ("latest", "earliest"):
        raise ValueError(f"start must be 'latest' or 'earliest', got {start!r}")
    if durable and group is None:
        raise ValueError("a durable subscription needs a group name (subscribe(pattern, group='billing', "
                         "durable=True)): the group is what remembers where its members left off")
    if start == "earliest" and not durable:
        raise ValueError("start='earliest' replays retained messages into a durable group; an ephemeral "
                         "subscription only sees what is published while it exists")


class ServiceError:
    """A handler's exception on its way back to the caller."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def reply_message(request: Message, result: object) -> Message:
    """The reply to ``request`` from what a handler returned (bytes-like or a Message)."""
    if isinstance(result, Message):
        reply = _replace(result) if result.correlation_id is not None else _replace(result, correlation_id=request.id)
        reply._settle = None
        return reply
    if isinstance(result, _BYTES_LIKE):
        return Message(result, correlation_id=request.id)
    raise TypeError(f"a service handler must return bytes, bytearray, memoryview or a ringbus.Message, not "
                    f"{type(result).__name__}")


class _NoSettle:
    """The settle handle of an ephemeral subscription's message: nothing to settle; settling is allowed and does
    nothing (so a handler written for durable subscriptions can ack either kind)."""

    def ack(self, message: Message) -> None:
        pass

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        pass

    def reject(self, message: Message) -> None:
        pass


NO_SETTLE = _NoSettle()


class Inbox:
    """Items handed from a backend's I/O thread to a waiting caller; beyond ``limit`` they are dropped (counted).

    A wait wakes at least every ``slice`` seconds, so that a caller blocked without a deadline still sees close().
    """

    def __init__(self, limit: int | None = None, slice: float = 0.25) -> None:
        self.items: deque[Any] = deque()
        self.cond = threading.Condition()
        self.limit = limit
        self.slice = slice
        self.dropped = 0
        self.closed = False

    def put(self, item: Any) -> None:
        with self.cond:
            if self.limit is not None and len(self.items) >= self.limit:
                self.dropped += 1
                return
            self.items.append(item)
            self.cond.notify()

    def get(self, deadline: float | None) -> Any:
        """The next item, or None at ``deadline`` (monotonic; None: wait for ever); Closed once closed."""
        with self.cond:
            while not self.items:
                if self.closed:
                    raise Closed("closed while waiting for a message")
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0.0:
                    return None
                self.cond.wait(self.slice if wait is None else min(wait, self.slice))
            return self.items.popleft()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def drain(self) -> list[Any]:
        with self.cond:
            items = list(self.items)
            self.items.clear()
            return items
