"""request / serve on the asyncio API: sync and async handlers, no server, handler errors, concurrent calls."""

from __future__ import annotations

import asyncio

import pytest

import ringbus
from ringbus.message import Message

from .support import WAIT, refused, serving

pytestmark = pytest.mark.asyncio


@pytest.fixture
def service(bus, names):
    return names.service()


async def supported(bus, service) -> bool:
    return not await refused(bus, "request_reply", lambda: bus.request(service, b"x", timeout=0.1))


@pytest.mark.adapters
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_request_returns_the_reply_of_a_handler(bus, url, service, kind):
    if not await supported(bus, service):
        return
    seen = []

    def plain(message):
        seen.append(message.id)
        return b"echo:" + bytes(message.body)

    async def coroutine(message):
        await asyncio.sleep(0)
        return plain(message)

    async with serving(url, service, plain if kind == "sync" else coroutine):
        reply = await bus.request(service, b"ping", timeout=WAIT)
    assert bytes(reply.body) == b"echo:ping"
    assert reply.correlation_id == seen[0]


async def test_request_returns_the_message_a_handler_returns(bus, url, service):
    request = Message(b"question", headers={"q": 1})

    async def handler(message):
        assert message.headers["q"] == 1
        return Message(b"answer", headers={"a": "yes"})

    async with serving(url, service, handler):
        reply = await bus.request(service, request, timeout=WAIT)
    assert (bytes(reply.body), reply.headers["a"], reply.correlation_id) == (b"answer", "yes", request.id)


@pytest.mark.adapters
async def test_request_without_server_raises_empty(bus, service):
    if not await supported(bus, service):
        return
    with pytest.raises(ringbus.Empty):
        await bus.request(service, b"anyone?", timeout=0.3)


@pytest.mark.adapters
async def test_handler_error_is_raised_to_the_caller_and_serving_goes_on(bus, url, service):
    if not await supported(bus, service):
        return

    async def handler(message):
        if bytes(message.body) == b"bad":
            raise ValueError("handler-boom-1234")
        return bytes(message.body)

    async with serving(url, service, handler):
        with pytest.raises(ringbus.RingbusError, match="handler-boom-1234") as raised:
            await bus.request(service, b"bad", timeout=WAIT)
        assert not isinstance(raised.value, ringbus.Empty)
        assert bytes((await bus.request(service, b"good", timeout=WAIT)).body) == b"good"


async def test_concurrent_requests_on_one_bus_each_get_their_own_reply(bus, url, service):
    both_busy = asyncio.Barrier(2)  # each server waits until two requests are being handled at once

    def server(name: bytes):
        async def handler(message):
            await asyncio.wait_for(both_busy.wait(), WAIT)
            return name + b":" + bytes(message.body)
        return handler

    async with serving(url, service, server(b"A")), serving(url, service, server(b"B")):
        replies = await asyncio.gather(bus.request(service, b"1", timeout=WAIT),
                                       bus.request(service, b"2", timeout=WAIT))
    served_by, answered = zip(*(bytes(reply.body).split(b":") for reply in replies), strict=True)
    assert answered == (b"1", b"2")  # each request got the reply to itself, though one socket carried both
    assert set(served_by) == {b"A", b"B"}


async def test_serve_ends_when_its_task_is_cancelled_and_another_server_takes_over(bus, second_bus, url, service):
    first = asyncio.ensure_future(second_bus.serve(service, lambda m: b"first"))
    assert bytes((await bus.request(service, b"?", timeout=WAIT)).body) == b"first"
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    async with serving(url, service, lambda m: b"second"):
        assert bytes((await bus.request(service, b"?", timeout=WAIT)).body) == b"second"


async def test_serve_rejects_a_handler_that_is_not_callable(bus, service):
    with pytest.raises(TypeError):
        await bus.serve(service, b"not a function")  # type: ignore[arg-type]
