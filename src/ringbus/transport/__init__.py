"""Transports between processes: ZeroMQ helpers that carry ringbus Messages, with CURVE security."""

from __future__ import annotations

from ringbus.transport._zmq_socket import (
    DEFAULT_COPY_THRESHOLD,
    DEFAULT_HWM,
    DEFAULT_LINGER,
    DEFAULT_MAX_MESSAGE_SIZE,
    TransportStatistics,
)
from ringbus.transport.curve import CurveClient, CurveKeypair, CurveServer, curve_keypair
from ringbus.transport.zmq import Publisher, Puller, Pusher, Replier, ReplyHandle, Requester, Subscriber

__all__ = [
    # push/pull
    "Pusher",
    "Puller",
    # pub/sub
    "Publisher",
    "Subscriber",
    # request-reply
    "Requester",
    "Replier",
    "ReplyHandle",
    # security
    "CurveServer",
    "CurveClient",
    "CurveKeypair",
    "curve_keypair",
    # counters and defaults
    "TransportStatistics",
    "DEFAULT_HWM",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_COPY_THRESHOLD",
]
