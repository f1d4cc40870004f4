"""The JetStream plumbing of the ``nats://`` backend: API calls, publishes with acks, and pull requests.

Everything here is asyncio and runs on the event loop that owns the nats-py connection. The raw JetStream API
(``$JS.API.*`` requests, JSON answers decoded with msgspec) is used rather than nats-py's manager classes: it is
the same protocol, one error path, and the answers on the hot path (stream state, publish acks) decode in a few
microseconds instead of building nats-py's dataclasses.

Pull requests go to one wildcard inbox per connection, one pull per consumer at a time; each request has its own
reply subject (where its closing status comes), so a status of a request given up (a timeout, a reconnect) is
not mistaken for the current one's, and a message that arrives when no pull of its consumer is waiting is kept for
the next one instead of waiting out its ack wait unseen (it would come back one attempt older).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any

import msgspec
import nats.errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from ringbus.backends._nats_wire import ApiError, PubAck
from ringbus.errors import Closed, PeerGone

__all__ = ["JetStream", "ConsumerInfo", "StreamState", "NOT_FOUND_CODES", "WRONG_LAST_SEQUENCE"]

STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014
STREAM_EXISTS_OTHERWISE = 10058
WRONG_LAST_SEQUENCE = 10071
NOT_FOUND_CODES = (STREAM_NOT_FOUND, CONSUMER_NOT_FOUND)
PULL_GRACE = 2.0  # seconds past a pull's expiry to wait for its closing status before giving it up

_json = msgspec.json.encode
_pub_ack = msgspec.json.Decoder(PubAck)


class StreamState(msgspec.Struct):
    messages: int = 0
    last_seq: int = 0
    subjects: dict[str, int] | None = None


class _StreamInfo(msgspec.Struct):
    state: StreamState | None = None
    config: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class SequenceInfo(msgspec.Struct):
    consumer_seq: int = 0
    stream_seq: int = 0


class ConsumerInfo(msgspec.Struct):
    delivered: SequenceInfo | None = None  # the last delivery's sequences: stream_seq and below were delivered
    num_ack_pending: int = 0
    num_pending: int = 0
    num_waiting: int = 0
    config: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


_stream_info = msgspec.json.Decoder(_StreamInfo)
_consumer_info = msgspec.json.Decoder(ConsumerInfo)


class _Pull:
    __slots__ = ("want", "msgs", "done", "status")

    def __init__(self, want: int, done: asyncio.Future[None]) -> None:
        self.want = want
        self.msgs: list[Msg] = []
        self.done = done
        self.status: str | None = None


class JetStream:
    """JetStream requests over one nats-py connection (the loop's thread only)."""

    def __init__(self, nc: Client, timeout: float, where: str) -> None:
        self.nc = nc
        self.timeout = timeout
        self.where = where
        self._inbox = ""
        self._pulls: dict[str, _Pull] = {}  # by reply token: where the closing status comes
        self._active: dict[tuple[str, str], _Pull] = {}  # by consumer: where its messages go
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._strays: dict[tuple[str, str], deque[Msg]] = {}
        self._seq = itertools.count()

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox() + "."
        await self.nc.subscribe(self._inbox + "*", cb=self._on_pulled)

    # -- requests ---------------------------------------------------------------------------------------------
    def gone(self, what: str, exc: BaseException) -> PeerGone | Closed:
        if self.nc.is_closed:
            return Closed(f"the connection to NATS at {self.where} is closed")
        return PeerGone(f"NATS at {self.where} did not answer {what} ({type(exc).__name__}: {exc}); "
                        "it may or may not have taken effect")

    async def request(self, subject: str, payload: bytes, headers: dict[str, str] | None = None,
                      timeout: float | None = None) -> Msg:
        try:
            reply: Msg = await self.nc.request(subject, payload, timeout=timeout or self.timeout, headers=headers)
            return reply
        except nats_errors.NoRespondersError:
            raise
        except (nats_errors.TimeoutError, asyncio.TimeoutError, nats_errors.ConnectionClosedError,
                nats_errors.OutboundBufferLimitError, nats_errors.ConnectionReconnectingError) as exc:
            raise self.gone(subject, exc) from None

    async def api(self, subject: str, body: dict[str, Any] | None = None) -> bytes:
        """One ``$JS.API.<subject>`` request; the raw JSON answer (ApiError if it is an error)."""
        try:
            reply = await self.request("$JS.API." + subject, b"" if body is None else _json(body))
        except nats_errors.NoRespondersError:
            raise PeerGone(f"JetStream does not answer at {self.where}: start the server with JetStream on "
                           "(nats-server -js), or wait until it has recovered its streams") from None
        data = reply.data
        if b'"error"' in data[:64] or b'"error":' in data:
            error = msgspec.json.decode(data).get("error")
            if error:
                raise ApiError(error)
        return data

    async def stream_state(self, stream: str, subjects: str | None = None) -> StreamState:
        info = _stream_info.decode(await self.api(f"STREAM.INFO.{stream}",
                                                  None if subjects is None else {"subjects_filter": subjects}))
        return info.state or StreamState()

    async def stream_config(self, stream: str) -> dict[str, Any]:
        info = _stream_info.decode(await self.api(f"STREAM.INFO.{stream}"))
        return info.config or {}

    async def consumer_info(self, stream: str, consumer: str) -> ConsumerInfo:
        return _consumer_info.decode(await self.api(f"CONSUMER.INFO.{stream}.{consumer}"))

    async def add_stream(self, config: dict[str, Any]) -> None:
        await self.api(f"STREAM.CREATE.{config['name']}", config)

    async def update_stream(self, config: dict[str, Any]) -> None:
        await self.api(f"STREAM.UPDATE.{config['name']}", config)

    async def add_consumer(self, stream: str, config: dict[str, Any]) -> None:
        await self.api(f"CONSUMER.DURABLE.CREATE.{stream}.{config['durable_name']}",
                       {"stream_name": stream, "config": config})

    async def stream_names(self, subject: str) -> list[str]:
        names: list[str] = []
        while True:
            page = msgspec.json.decode(await self.api("STREAM.NAMES", {"subject": subject, "offset": len(names)}))
            batch = page.get("streams") or []
            names.extend(batch)
            if not batch or len(names) >= page.get("total", 0):
                return names

    async def delete_stream(self, stream: str) -> bool:
        try:
            await self.api(f"STREAM.DELETE.{stream}")
            return True
        except ApiError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return False
            raise

    async def delete_message(self, stream: str, seq: int) -> bool:
        """Remove one stored message; False if it was gone already."""
        try:
            await self.api(f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})
            return True
        except ApiError as exc:
            if exc.code == 404 or exc.err_code == 10057:
                return False
            raise

    async def get_message(self, stream: str, **where: Any) -> dict[str, Any] | None:
        """A stored message (``seq=`` or ``last_by_subj=``) as JetStream returns it, or None if there is none."""
        try:
            answer = msgspec.json.decode(await self.api(f"STREAM.MSG.GET.{stream}", where))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise
        return answer.get("message")  # type: ignore[no-any-return]

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> PubAck:
        """A JetStream publish: returns once the stream stored it. NoRespondersError if no stream takes the
        subject; ApiError if the stream refused it."""
        reply = await self.request(subject, payload, headers)
        ack = _pub_ack.decode(reply.data)
        if ack.error:
            raise ApiError(ack.error)
        return ack

    # -- pulls ------------------------------------------------------------------------------------------------
    async def pull(self, stream: str, consumer: str, batch: int, expires: float | None) -> tuple[list[Msg], str | None]:
        """Up to ``batch`` messages of a pull consumer: what is there now (``expires`` None), or what comes within
        ``expires`` seconds. Returns the messages and the closing status (``404``, ``408``, ``409``, ``503``...).

        One pull per consumer at a time: JetStream delivers a message with its own subject, not the pull's reply
        subject, so the consumer (from the ack subject) is what ties a message to the pull that asked for it.
        """
        key = (stream, consumer)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            strays = self._strays.get(key)
            if strays:
                return [strays.popleft() for _ in range(min(batch, len(strays)))], None
            token = str(next(self._seq))
            pull = _Pull(batch, asyncio.get_running_loop().create_future())
            self._pulls[token] = pull
            self._active[key] = pull
            request: dict[str, Any] = {"batch": batch}
            if expires is None:
                request["no_wait"] = True
            else:
                request["expires"] = max(int(expires * 1e9), 1_000_000)
            try:
                await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}", _json(request),
                                      reply=self._inbox + token)
                await asyncio.wait((pull.done,), timeout=(expires or 0.0) + PULL_GRACE + self.timeout)
            except (nats_errors.ConnectionClosedError, nats_errors.OutboundBufferLimitError) as exc:
                raise self.gone("a pull request", exc) from None
            finally:
                self._pulls.pop(token, None)
                self._active.pop(key, None)
            if len(pull.msgs) > batch:  # stragglers of an earlier pull came along: kept for the next one
                self._strays.setdefault(key, deque()).extend(pull.msgs[batch:])
                del pull.msgs[batch:]
            return pull.msgs, pull.status

    async def _on_pulled(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is not None:  # a pull's closing status comes on its own reply subject
            pull = self._pulls.get(msg.subject[len(self._inbox):])
            if pull is not None and status != "100" and not pull.done.done():  # 100: a heartbeat
                pull.status = status
                pull.done.set_result(None)
            return
        parts = msg.reply.split(".")
        key = (parts[2], parts[3]) if len(parts) == 9 else (parts[4], parts[5])
        pull = self._active.get(key)
        if pull is None:  # delivered for a pull given up on: the next pull of the consumer takes it
            self._strays.setdefault(key, deque()).append(msg)
            return
        pull.msgs.append(msg)
        if len(pull.msgs) >= pull.want and not pull.done.done():
            pull.done.set_result(None)

    def abandon_pulls(self) -> None:
        """The connection dropped: every waiting pull ends now (its request died with the connection)."""
        for pull in list(self._pulls.values()):
            if not pull.done.done():
                pull.status = "disconnected"
                pull.done.set_result(None)

    def take_strays(self) -> list[Msg]:
        """Every message delivered to a pull given up on and not taken since (to give back at close)."""
        out = [msg for strays in self._strays.values() for msg in strays]
        self._strays.clear()
        return out
