"""Thin ZeroMQ helpers that send and receive ringbus Messages: push/pull, pub/sub and dealer/router request-reply."""

from __future__ import annotations

from ringbus.transport._pubsub import Publisher, Subscriber
from ringbus.transport._pushpull import Puller, Pusher
from ringbus.transport._reqrep import Replier, ReplyHandle, Requester
from ringbus.transport._zmq_socket import (
    DEFAULT_COPY_THRESHOLD,
    DEFAULT_HWM,
    DEFAULT_LINGER,
    DEFAULT_MAX_MESSAGE_SIZE,
    TransportStatistics,
)

__all__ = [
    "Pusher",
    "Puller",
    "Publisher",
    "Subscriber",
    "Requester",
    "Replier",
    "ReplyHandle",
    "TransportStatistics",
    "DEFAULT_HWM",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_COPY_THRESHOLD",
]
