"""ringbus for asyncio: the Bus contract with awaitables, and awaitable waits on the core queues.

``async with ringbus.aio.connect(url) as bus``: the sync :class:`ringbus.Bus` method names, awaited
(docs/asyncio.md). ``memory://`` and the embedded broker (``tcp://``, ``ipc://``) are native asyncio clients;
every other url runs the backend's sync Bus on a worker thread of its own (:class:`ThreadedBus`, an adapter).
:class:`AsyncRing` and :class:`AsyncPriorityQueue` wait on the core queues without blocking the loop.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ringbus.aio._base import AsyncBus, AsyncHandler, AsyncMessage, AsyncSubscription, Subscribing
from ringbus.aio.core import AsyncPriorityQueue, AsyncRing

__all__ = [
    # the messaging contract
    "connect",
    "AsyncBus",
    "AsyncMessage",
    "AsyncSubscription",
    "AsyncHandler",
    "Subscribing",
    # the core queues
    "AsyncRing",
    "AsyncPriorityQueue",
]

_ADAPTED = ("redis", "rediss", "amqp", "amqps", "nats", "mqtt")


def connect(url: str = "memory://", **options: Any) -> AsyncBus:
    """Open an :class:`AsyncBus` on the backend ``url`` names (the urls of :func:`ringbus.connect`).

    Returns at once; the connection is made by ``await bus`` (``bus = await ringbus.aio.connect(url)``),
    ``async with``, or the first call - which then raises what connecting raised.

    Raises
    ------
    TypeError, ValueError
        If ``url`` is not a str, or names no known backend.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str such as 'memory://' or 'tcp://127.0.0.1:5555', not {type(url).__name__}")
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from ringbus.aio.memory import AsyncMemoryBus

        return AsyncMemoryBus(url, **options)
    if scheme in ("tcp", "ipc"):
        from ringbus.aio.broker import AsyncBrokerBus

        return AsyncBrokerBus(url, **options)
    if scheme in _ADAPTED:
        from ringbus.aio.threaded import ThreadedBus

        return ThreadedBus(url, **options)
    raise ValueError(f"unknown bus url {url!r}: expected memory://, tcp://host:port, ipc:///path, redis://, amqp://, "
                     "nats:// or mqtt://")
