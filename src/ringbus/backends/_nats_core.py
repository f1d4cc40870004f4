"""The asyncio core of the ``nats://`` backend: every Bus operation on NATS JetStream as a coroutine.

:class:`NatsCore` holds one nats-py connection; :class:`ringbus.backends.nats.NatsBus` runs it on a private loop
thread for the sync API, and an asyncio API can await it directly (settling through :meth:`NatsCore.ack` and
friends, with the :class:`Delivery` that :meth:`NatsCore.fetch` returns). Its parts, one concern each:

- :mod:`._nats_wire`: names, subjects, the message payload, pattern translation;
- :mod:`._nats_js`: JetStream API requests, publishes with acks, pull requests;
- :mod:`._nats_base`: the connection (reconnecting), queue lookup, settling;
- :mod:`._nats_queues`: declare, send, fetch, stats;
- :mod:`._nats_topics`: publish, subscriptions, durable groups, request/serve.
"""

from __future__ import annotations

from ringbus.backends._nats_base import Delivery
from ringbus.backends._nats_topics import Listener, TopicOps, TopicTap
from ringbus.backends._nats_wire import queue_of_stream

__all__ = ["NatsCore", "Delivery", "Listener", "TopicTap"]


class NatsCore(TopicOps):
    """Queues, topics and services on NATS JetStream, as coroutines (see :class:`._nats_base.CoreBase` for the
    parameters)."""

    async def drop_namespace(self) -> list[str]:
        """Delete every stream of this prefix (queues, topics, dedup records, stored bodies); return the queue
        names deleted."""
        deleted = []
        for stream in await self.js.stream_names(self.prefix + "q.>"):
            if await self.js.delete_stream(stream):
                name = queue_of_stream(stream, self.stream_prefix)
                if name is not None:
                    deleted.append(name)
        for stream in (self.topic_stream, (self.prefix + "dedup").replace(".", "~"), "OBJ_" + self.bodies):
            await self.js.delete_stream(stream)
        self._queues.clear()
        self._made.clear()
        self._topics_ready = self._dedup_ready = False
        self._object_store = None
        return sorted(deleted)
