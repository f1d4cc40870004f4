"""Majordomo (RFC 7) on zmq.asyncio for the embedded broker's request-reply: a client pool and a worker.

The same wire as :mod:`ringbus.broker.mdp_client` (constants from :mod:`ringbus.broker.majordomo`), for one
event loop. MDP has no request id, so a client socket carries one request at a time; concurrent requests
take sockets from a pool, and a socket whose request was given up on (timeout, cancellation) is closed, so a
late reply is never taken for another request's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import zmq
import zmq.asyncio

from ringbus.aio._base import AsyncHandler
from ringbus.backends._common import reply_message
from ringbus.broker.majordomo import (
    C_CLIENT,
    ERROR_FRAME,
    MMI_PREFIX,
    W_DISCONNECT,
    W_HEARTBEAT,
    W_READY,
    W_REPLY,
    W_REQUEST,
    W_WORKER,
)
from ringbus.broker.server import MDP_HEARTBEAT
from ringbus.codec import decode, encode
from ringbus.errors import Empty, ProtocolError, RingbusError
from ringbus.message import Message
from ringbus.transport._zmq_socket import recv_nowait

__all__ = ["MdpClients", "serve"]

log = logging.getLogger("ringbus.aio.broker")

LIVENESS = 3  # heartbeats the broker may miss before the worker reconnects (the broker's own setting)
POLL = 0.1  # seconds a worker waits for a request before it looks at stop and close again
WORKER_LINGER = 1000  # ms the worker's socket may take to deliver the last reply and DISCONNECT


def _dealer(context: zmq.asyncio.Context, endpoint: str, linger_ms: int = 0) -> zmq.asyncio.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.connect(endpoint)
    return sock


class MdpClients:
    """The request side: a pool of client sockets, one per request in flight."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str) -> None:
        self._context = context
        self._endpoint = endpoint
        self._idle: list[zmq.asyncio.Socket] = []
        self._closed = False

    async def request(self, service: str, message: Message, timeout: float | None) -> Message:
        name = service.encode("utf-8")
        sock = self._idle.pop() if self._idle else _dealer(self._context, self._endpoint)
        reusable = False
        try:
            sock.send_multipart([b"", C_CLIENT, name, *encode(message)])
            if not await sock.poll(-1 if timeout is None else math.ceil(timeout * 1000)):
                raise Empty(f"no reply from service {service!r} within {timeout} s")
            reply = await sock.recv_multipart()
            if len(reply) < 3 or reply[0] != b"" or reply[1] != C_CLIENT or reply[2] != name:
                raise ProtocolError(f"malformed Majordomo reply to a request for {service!r}: {reply[:3]!r}")
            reusable = True
            body = reply[3:]
            if body and body[0] == ERROR_FRAME:
                reason = body[1].decode("utf-8", "replace") if len(body) > 1 else "no reason given"
                raise RingbusError(f"service {service!r} failed: {reason}")
            return decode(body)
        finally:
            if reusable and not self._closed:
                self._idle.append(sock)
            else:
                sock.close(0)

    def close(self) -> None:
        self._closed = True
        for sock in self._idle:
            sock.close(0)
        self._idle.clear()


async def serve(context: zmq.asyncio.Context, endpoint: str, service: str, handler: AsyncHandler,
                stop: asyncio.Event | None, closed: Callable[[], bool]) -> None:
    """Offer ``service`` to the broker at ``endpoint`` until ``stop`` is set, ``closed()`` or cancellation."""
    name = service.encode("utf-8")
    if name.startswith(MMI_PREFIX):
        raise ValueError(f"service {service!r} is reserved: mmi.* services belong to the broker")
    await _Worker(context, endpoint, name, handler).run(stop, closed)


class _Worker:
    """One serve loop: the socket, the broker's liveness, the heartbeat timer."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str, name: bytes, handler: AsyncHandler) -> None:
        self._context = context
        self._endpoint = endpoint
        self._name = name
        self._label = name.decode("utf-8", "replace")
        self._handler = handler
        self._sock: zmq.asyncio.Socket | None = None
        self._shadow: zmq.Socket[Any] | None = None
        self._broker_expires = 0.0
        self._heartbeat_at = 0.0

    def _connect(self) -> None:
        self._sock = _dealer(self._context, self._endpoint, WORKER_LINGER)
        self._shadow = zmq.Socket.shadow(self._sock.underlying)
        self._broker_expires = time.monotonic() + MDP_HEARTBEAT * LIVENESS
        self._send([b"", W_WORKER, W_READY, self._name])

    def _disconnect(self, linger: int | None = None) -> None:
        if self._sock is not None:
            self._sock.close(linger)
            self._sock = self._shadow = None

    def _send(self, frames: list[Any]) -> None:
        assert self._sock is not None
        self._heartbeat_at = time.monotonic() + MDP_HEARTBEAT  # any command counts as a heartbeat
        future = cast("asyncio.Future[Any]", self._sock.send_multipart(frames))
        if future.done() and future.exception() is not None:
            log.warning("asyncio Majordomo worker %r: a command was not sent: %r", self._label, future.exception())

    async def run(self, stop: asyncio.Event | None, closed: Callable[[], bool]) -> None:
        self._connect()
        try:
            while not closed() and not (stop is not None and stop.is_set()):
                now = time.monotonic()
                if now >= self._broker_expires:
                    log.warning("asyncio Majordomo worker %r: the broker at %s was silent for %g s; reconnecting",
                                self._label, self._endpoint, MDP_HEARTBEAT * LIVENESS)
                    self._disconnect(0)
                    self._connect()
                    continue
                if now >= self._heartbeat_at:
                    self._send([b"", W_WORKER, W_HEARTBEAT])
                wait = min(POLL, self._heartbeat_at - now, self._broker_expires - now)
                assert self._sock is not None
                if await self._sock.poll(max(0, math.ceil(wait * 1000))):
                    await self._read()
        finally:
            if self._sock is not None and not closed():
                try:
                    self._send([b"", W_WORKER, W_DISCONNECT])
                except zmq.ZMQError:
                    pass
            self._disconnect()

    async def _read(self) -> None:
        while self._shadow is not None:
            frames = recv_nowait(self._shadow)
            if frames is None:
                return
            self._broker_expires = time.monotonic() + MDP_HEARTBEAT * LIVENESS
            if len(frames) >= 3 and frames[0] == b"" and frames[1] == W_WORKER:
                command = frames[2]
                if command == W_REQUEST and len(frames) >= 5 and frames[4] == b"":
                    reply = await self._answer(frames[5:])
                    if self._sock is not None:
                        self._send([b"", W_WORKER, W_REPLY, frames[3], b"", *reply])
                    continue
                if command == W_HEARTBEAT:
                    continue
                if command == W_DISCONNECT:
                    log.info("asyncio Majordomo worker %r: the broker sent DISCONNECT; reconnecting", self._label)
                    self._disconnect(0)
                    self._connect()
                    return
            log.warning("asyncio Majordomo worker %r: ignored a malformed command: %r", self._label, frames[:3])

    async def _answer(self, body: list[bytes]) -> list[Any]:
        """The reply frames for one request; a handler's failure becomes an error reply."""
        try:
            request = decode(body)
            result = self._handler(request)
            if isinstance(result, Awaitable):
                result = await self._keep_beating(result)
            return encode(reply_message(request, result))
        except Exception as exc:  # noqa: BLE001 - the caller hears of it; serving goes on
            log.exception("asyncio Majordomo worker: the handler of %r failed; the client gets an error reply",
                          self._label)
            return [ERROR_FRAME, f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace")]

    async def _keep_beating(self, pending: Awaitable[Any]) -> Any:
        """Await a coroutine handler, heartbeating meanwhile so that a long request does not look like death."""
        task = asyncio.ensure_future(pending)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=MDP_HEARTBEAT)
                if done:
                    return task.result()
                if self._sock is not None:
                    self._send([b"", W_WORKER, W_HEARTBEAT])
        finally:
            task.cancel()
