"""ringbus: a message core for Python - native queues, ZeroMQ between processes, messaging patterns."""

from __future__ import annotations

from ringbus._core import IMPLEMENTATION, ArrayRing, PriorityQueue, QueueStatistics, Ring, ShmChannel
from ringbus.errors import Closed, Empty, Full, PeerGone, ProtocolError, RingbusError, Unsupported

__version__ = "0.1.0"

__all__ = [
    # in-process queues (native core)
    "Ring",
    "PriorityQueue",
    "ArrayRing",
    "QueueStatistics",
    "IMPLEMENTATION",
    # between processes
    "ShmChannel",
    # errors
    "RingbusError",
    "Full",
    "Empty",
    "Closed",
    "PeerGone",
    "ProtocolError",
    "Unsupported",
]
