"""Helpers of the asyncio contract suite: the sync suite's (tests/contract/support.py), awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

import ringbus
import ringbus.aio
from contract.support import DEAD_FROM, DEAD_REASON, FEATURES, QUIET, WAIT
from ringbus.aio import AsyncBus, AsyncHandler, AsyncMessage, AsyncSubscription

__all__ = ["WAIT", "QUIET", "take", "one", "nothing", "bodies", "dead", "refused", "serving", "needs_queues"]

Source = AsyncBus | AsyncSubscription


def _receiver(source: Source, queue: str | None) -> Callable[[float], Awaitable[AsyncMessage | None]]:
    if queue is None:
        assert isinstance(source, AsyncSubscription)
        return source.receive
    assert isinstance(source, AsyncBus)
    return lambda timeout: source.receive(queue, timeout=timeout)


async def take(source: Source, queue: str | None = None, n: int = 1, timeout: float = WAIT) -> list[AsyncMessage]:
    """``n`` messages from a queue of ``source`` (a bus) or from ``source`` (a subscription); fails if fewer came."""
    receive = _receiver(source, queue)
    got: list[AsyncMessage] = []
    while len(got) < n:
        message = await receive(timeout)
        if message is None:
            pytest.fail(f"received {len(got)} of {n} messages from {queue or source!r}; then none for {timeout}s")
        got.append(message)
    return got


async def one(source: Source, queue: str | None = None) -> AsyncMessage:
    """The next message of a queue (or subscription); fails if none came within WAIT seconds."""
    return (await take(source, queue))[0]


async def nothing(source: Source, queue: str | None = None, timeout: float = QUIET) -> None:
    """Asserts that no message is delivered within ``timeout`` seconds."""
    message = await _receiver(source, queue)(timeout)
    assert message is None, f"expected no message from {queue or source!r}, got {message!r}"


def bodies(messages: list[AsyncMessage]) -> list[bytes]:
    return [bytes(m.body) for m in messages]


async def dead(bus: AsyncBus, queue: str, reason: str, *, dead_letter: str | None = None) -> AsyncMessage:
    """The next dead letter of ``queue``; checks why it died and where it came from."""
    message = await one(bus, dead_letter or f"{queue}.dlq")
    assert message.headers.get(DEAD_REASON) == reason, message.headers
    assert message.headers.get(DEAD_FROM) == queue, message.headers
    return message


async def refused(bus: AsyncBus, feature: str, attempt: Callable[[], Awaitable[object]] | None = None) -> bool:
    """True if ``bus`` declares ``feature`` unsupported; then ``attempt()`` must raise ringbus.Unsupported."""
    assert feature in FEATURES, f"unknown feature {feature!r}"
    if feature not in bus.unsupported_features:
        return False
    if attempt is not None:
        with pytest.raises(ringbus.Unsupported):
            await attempt()
    return True


def needs_queues(bus: AsyncBus) -> None:
    """Skips the test on a backend without queues (mqtt://): the ``queue`` fixture checks it refuses them."""
    if "queues" in bus.unsupported_features:
        pytest.skip("the backend declares no queues")


@asynccontextmanager
async def serving(url: str, service: str, handler: AsyncHandler) -> AsyncIterator[None]:
    """Serves ``service`` with ``handler`` on a bus of its own, in a task, until the block ends."""
    stop = asyncio.Event()
    async with ringbus.aio.connect(url) as server:
        task = asyncio.ensure_future(server.serve(service, handler, stop=stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)  # serve returns once stop is set (raises what it raised)
