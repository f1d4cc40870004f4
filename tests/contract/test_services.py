"""request / serve: replies, correlation, no server, handler errors, several servers."""

from __future__ import annotations

import threading

import pytest

import ringbus
from ringbus.bus import connect
from ringbus.message import Message

from .support import WAIT, serving, unsupported


@pytest.fixture
def service(bus, names):
    """A fresh service name; None (the test returns) when the backend declares request_reply unsupported."""
    name = names.service()
    if unsupported(bus, "request_reply", lambda: bus.request(name, b"x", timeout=0.1)):
        return None
    return name


def test_request_returns_the_reply_of_a_bytes_handler(bus, url, service):
    if service is None:
        return
    seen = []

    def handler(message):
        seen.append(message.id)
        return b"echo:" + bytes(message.body)

    with serving(url, service, handler):
        reply = bus.request(service, b"ping", timeout=WAIT)
    assert bytes(reply.body) == b"echo:ping"
    assert reply.correlation_id == seen[0]


def test_request_returns_the_message_a_handler_returns(bus, url, service):
    if service is None:
        return
    request = Message(b"question", headers={"q": 1})

    def handler(message):
        assert message.headers["q"] == 1
        return Message(b"answer", headers={"a": "yes"})

    with serving(url, service, handler):
        reply = bus.request(service, request, timeout=WAIT)
    assert (bytes(reply.body), reply.headers["a"], reply.correlation_id) == (b"answer", "yes", request.id)


def test_request_without_server_raises_empty(bus, service):
    if service is None:
        return
    with pytest.raises(ringbus.Empty):
        bus.request(service, b"anyone?", timeout=0.3)


def test_handler_error_is_raised_to_the_caller_and_serving_goes_on(bus, url, service):
    if service is None:
        return

    def handler(message):
        if bytes(message.body) == b"bad":
            raise ValueError("handler-boom-1234")
        return bytes(message.body)

    with serving(url, service, handler):
        with pytest.raises(ringbus.RingbusError, match="handler-boom-1234") as raised:
            bus.request(service, b"bad", timeout=WAIT)
        assert not isinstance(raised.value, ringbus.Empty)
        assert bytes(bus.request(service, b"good", timeout=WAIT).body) == b"good"


def test_two_servers_share_requests(bus, url, service, threads):
    if service is None:
        return
    # Each handler waits until two requests are being handled at once: one server alone cannot pass.
    both_busy = threading.Barrier(2, timeout=WAIT)

    def server(name):
        def handler(message):
            both_busy.wait()
            return name
        return handler

    def call():
        with connect(url) as own:  # one bus per thread
            return bytes(own.request(service, b"who?", timeout=2 * WAIT).body)

    with serving(url, service, server(b"A")), serving(url, service, server(b"B")):
        threads.start(call, name="first")
        threads.start(call, name="second")
        results = threads.join()
    assert sorted(results.values()) == [b"A", b"B"]
