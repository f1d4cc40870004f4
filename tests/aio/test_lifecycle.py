"""Connecting and closing on the asyncio API: ways to open, Closed after close, bad urls, one loop per bus."""

from __future__ import annotations

import asyncio
import threading

import pytest

import ringbus
import ringbus.aio
from contract.support import Names

pytestmark = pytest.mark.asyncio

CALLS = {
    "declare_queue": lambda bus, q, n: bus.declare_queue(q),
    "send": lambda bus, q, n: bus.send(q, b"x"),
    "send_many": lambda bus, q, n: bus.send_many(q, [b"x"]),
    "receive": lambda bus, q, n: bus.receive(q, timeout=0),
    "consume": lambda bus, q, n: bus.consume(q, timeout=0).__anext__(),
    "queue_stats": lambda bus, q, n: bus.queue_stats(q),
    "queues": lambda bus, q, n: bus.queues(),
    "publish": lambda bus, q, n: bus.publish(n.topic("x"), b"x"),
    "subscribe": lambda bus, q, n: bus.subscribe(n.topic("x"))._open(),
    "request": lambda bus, q, n: bus.request(n.service(), b"x", timeout=0.1),
    "serve": lambda bus, q, n: bus.serve(n.service(), lambda m: b""),
}


@pytest.mark.adapters
async def test_ways_to_open_and_close(url):
    async with ringbus.aio.connect(url) as bus:
        assert not bus.closed
    assert bus.closed and "closed" in repr(bus)
    awaited = await ringbus.aio.connect(url)
    assert isinstance(awaited, ringbus.aio.AsyncBus) and not awaited.closed
    await awaited.close()
    await awaited.close()  # idempotent
    assert awaited.closed
    for call in (CALLS["send"], CALLS["receive"], CALLS["publish"]):  # every call refuses (all tried natively)
        with pytest.raises(ringbus.Closed):
            await call(awaited, "q", Names())


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_every_method_raises_closed_after_close(bus, names, call):
    q = names.queue()
    if "queues" not in bus.unsupported_features:
        await bus.declare_queue(q)
    await bus.close()
    with pytest.raises(ringbus.Closed):
        await call(bus, q, names)


async def test_url_must_name_a_known_scheme():
    with pytest.raises(ValueError):
        ringbus.aio.connect("nope://x")
    with pytest.raises(TypeError):
        ringbus.aio.connect(123)  # type: ignore[arg-type]


async def test_what_connecting_raised_is_raised_by_open_and_by_every_call():
    pytest.importorskip("redis")
    bus = ringbus.aio.connect("redis://127.0.0.1:6379/0", timeout=-1)  # the adapter connects on its thread
    with pytest.raises(ValueError, match="timeout"):
        await bus.open()
    with pytest.raises(ValueError, match="timeout"):
        await bus.queues()
    await bus.close()


async def test_a_broker_bus_belongs_to_its_event_loop(bus, url, queue):
    if not url.startswith(("tcp://", "ipc://")):
        pytest.skip("only the broker client binds to a loop (memory:// has nothing to bind)")
    q = await queue()

    def elsewhere() -> None:
        asyncio.run(bus.send(q, b"x"))

    error: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(elsewhere, error))
    thread.start()
    thread.join(10)
    assert error and isinstance(error[0], ringbus.RingbusError) and "event loop" in str(error[0])


def _catch(fn, errors: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - checked by the test
        errors.append(exc)


async def test_memory_names_are_isolated(names):
    async with ringbus.aio.connect(f"memory://{names.queue()}") as a, \
            ringbus.aio.connect(f"memory://{names.queue()}") as b:
        q = names.queue()
        await a.declare_queue(q)
        assert q not in await b.queues()
        with pytest.raises(ringbus.NotFound):
            await b.receive(q, timeout=0)


async def test_sync_and_async_memory_buses_share_queues(names):
    url = f"memory://{names.queue()}"
    q = names.queue()
    with ringbus.connect(url) as sync:
        sync.declare_queue(q)
        async with ringbus.aio.connect(url) as bus:
            waiting = asyncio.ensure_future(bus.receive(q, timeout=10))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(sync.send, q, b"from a thread")  # seen by polling: no doorbell rang
            message = await asyncio.wait_for(waiting, 10)
            assert bytes(message.body) == b"from a thread"
            await message.ack()
