"""ringbus: a message core for Python - native queues, ZeroMQ between processes, messaging patterns."""

from __future__ import annotations

from ringbus import codec  # encode/decode/dumps/loads stay namespaced
from ringbus._core import IMPLEMENTATION, ArrayRing, PriorityQueue, QueueStatistics, Ring, ShmChannel
from ringbus.broker.server import Broker
from ringbus.bus import Bus, QueueStats, Subscription, connect
from ringbus.errors import Closed, Empty, Full, NotFound, PeerGone, ProtocolError, RingbusError, Unsupported
from ringbus.message import HeaderValue, Message, SettleHandle, new_id
from ringbus.transport import (
    CurveClient,
    CurveKeypair,
    CurveServer,
    Publisher,
    Puller,
    Pusher,
    Replier,
    ReplyHandle,
    Requester,
    Subscriber,
    TransportStatistics,
    curve_keypair,
)

__version__ = "0.1.0"

__all__ = [
    # the messaging contract
    "connect",
    "Bus",
    "Subscription",
    "QueueStats",
    "Broker",
    # in-process queues (native core)
    "Ring",
    "PriorityQueue",
    "ArrayRing",
    "QueueStatistics",
    "IMPLEMENTATION",
    # messages
    "Message",
    "SettleHandle",
    "HeaderValue",
    "new_id",
    "codec",
    # between processes
    "ShmChannel",
    "Pusher",
    "Puller",
    "Publisher",
    "Subscriber",
    "Requester",
    "Replier",
    "ReplyHandle",
    "TransportStatistics",
    "CurveServer",
    "CurveClient",
    "CurveKeypair",
    "curve_keypair",
    # errors
    "RingbusError",
    "Full",
    "Empty",
    "Closed",
    "PeerGone",
    "ProtocolError",
    "Unsupported",
    "NotFound",
]
