"""Helpers of the contract suite: fresh names, receiving with a bound, dead letters, declared-unsupported features."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import ringbus
from ringbus.bus import Bus, Handler, Subscription, connect
from ringbus.message import Message

# How long to wait for something that must arrive: a failing test takes this long, a passing one never does.
WAIT = 10.0
# How long to wait for something that must NOT arrive.
QUIET = 0.2

DEAD_REASON = "ringbus-dead-reason"
DEAD_FROM = "ringbus-dead-from"

FEATURES = frozenset({
    "priority", "delay", "ttl", "dedup", "ordered_by_key", "max_length",
    "durable_subscription", "replay", "request_reply", "queues",
})


def unsupported(bus: Bus, feature: str, attempt: Callable[[], object] | None = None) -> bool:
    """True if ``bus`` declares ``feature`` unsupported (``bus.unsupported_features``).

    Then ``attempt`` (a call that uses the feature), if given, must raise ringbus.Unsupported: a backend that
    cannot give a feature says so, never a silent no-op. The caller returns when this is true.
    """
    assert feature in FEATURES, f"unknown feature {feature!r}"
    if feature not in getattr(bus, "unsupported_features", frozenset()):
        return False
    if attempt is not None:
        with pytest.raises(ringbus.Unsupported):
            attempt()
    return True


class Names:
    """Names that no other test uses (a shared broker sees every test's queues and topics)."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:12]
        self._count = itertools.count()

    def _next(self, kind: str) -> str:
        return f"{kind}-{self.run}-{next(self._count)}"

    def queue(self) -> str:
        return self._next("q")

    def service(self) -> str:
        return self._next("svc")

    def group(self) -> str:
        return self._next("g")

    def topic(self, *words: str) -> str:
        """``t-<run>.<words...>``: a topic, or a pattern when words hold ``*`` or ``#``."""
        return ".".join((f"t-{self.run}", *words))


Source = Bus | Subscription


def _receiver(source: Source, queue: str | None) -> Callable[[float], Message | None]:
    if queue is None:
        assert isinstance(source, Subscription)
        return source.receive
    assert isinstance(source, Bus)
    return lambda timeout: source.receive(queue, timeout=timeout)


def take(source: Source, queue: str | None = None, n: int = 1, timeout: float = WAIT) -> list[Message]:
    """``n`` messages from a queue of ``source`` (a Bus) or from ``source`` (a Subscription); fails if fewer came."""
    receive = _receiver(source, queue)
    got: list[Message] = []
    while len(got) < n:
        message = receive(timeout)
        if message is None:
            pytest.fail(f"received {len(got)} of {n} messages from {queue or source!r}; then none for {timeout}s")
        got.append(message)
    return got


def one(source: Source, queue: str | None = None) -> Message:
    """The next message of a queue (or subscription); fails if none came within WAIT seconds."""
    return take(source, queue)[0]


def nothing(source: Source, queue: str | None = None, timeout: float = QUIET) -> None:
    """Asserts that no message is delivered within ``timeout`` seconds."""
    message = _receiver(source, queue)(timeout)
    assert message is None, f"expected no message from {queue or source!r}, got {message!r}"


def bodies(messages: list[Message]) -> list[bytes]:
    return [bytes(m.body) for m in messages]


def dead(bus: Bus, queue: str, reason: str, *, dead_letter: str | None = None) -> Message:
    """The next dead letter of ``queue``; checks why it died and where it came from."""
    message = one(bus, dead_letter or f"{queue}.dlq")
    assert message.headers.get(DEAD_REASON) == reason, message.headers
    assert message.headers.get(DEAD_FROM) == queue, message.headers
    return message


def in_thread(fn: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Runs ``fn`` in a thread and returns its result; fails (instead of hanging) if it does not finish."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{fn!r} did not finish within {timeout}s")
    if error:
        raise error[0]
    return result[0]


@contextmanager
def serving(url: str, service: str, handler: Handler) -> Iterator[None]:
    """Serves ``service`` with ``handler`` in a thread on a connection of its own until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connect(url) as server:
                server.serve(service, handler, stop=stop)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"serve {service}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive(), f"serve({service!r}) did not return within {WAIT}s of stop being set"
    if errors:
        raise AssertionError(f"serve({service!r}) raised {errors[0]!r}") from errors[0]
