"""What a broker started on a data directory gives back: the ids of one queue's messages, drained and acked."""

from __future__ import annotations

from pathlib import Path

import ringbus
from ringbus.backends.broker import BrokerBus


def recovered_ids(data: Path, queue: str = "orders") -> list[str]:
    """Start a broker (no faults) on ``data``, drain ``queue`` (acking), stop it; ids in delivery order.

    A queue the log does not know (its DECLARE never reached the disk) gives [].
    """
    with ringbus.Broker(data, "tcp://127.0.0.1:0") as broker, BrokerBus(broker.endpoint, timeout=10.0) as bus:
        try:
            depth = bus.queue_stats(queue).depth
        except ringbus.NotFound:
            return []
        ids = []
        for _ in range(depth):
            message = bus.receive(queue, timeout=5.0)
            assert message is not None, "a recovered message was not delivered"
            ids.append(message.id)
            message.ack()
        return ids
