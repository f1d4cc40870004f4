"""``ringbus bench aio``: the asyncio API beside the sync API on the same work (issue 9: "Async API overhead").

Through an embedded broker (one child process for the run, fsync=batch, TCP loopback), a producer and a consumer in this
process, each on a connection of its own, timed from the first send to the last ack the broker has applied:

1. one confirmed send at a time (``await bus.send`` / ``bus.send``), ``consume(1000)`` + ack;
2. ``send_many`` in batches of 100, ``consume(1000)`` + ack.

ringbus's row is the asyncio API on asyncio's own loop (two tasks on one loop); the peers are the sync API
(two threads, as sync code must) and the asyncio API under uvloop when it is installed. The issue's target is
the sync row's ratio (sync time / async time) >= 0.8. A third case puts :class:`ringbus.aio.AsyncRing`
between two tasks beside ``asyncio.Queue``. ``python -m ringbus.bench.aio --scale 0.05`` runs it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from itertools import repeat
from typing import Any

import ringbus.aio
from ringbus.bench._harness import Case, run_case
from ringbus.bench.broker import BATCH, CHILD_TIMEOUT, PREFETCH, SIZE, now
from ringbus.bench.convoy import broker_url, shutdown
from ringbus.bus import connect

try:
    import uvloop
except ImportError:  # an optional peer: its rows are left out, and missing_peers() says so
    uvloop = None  # type: ignore[assignment]  # an optional peer, looked at by missing_peers()

__all__ = ["cases", "main", "missing_peers", "shutdown", "async_run", "sync_run"]

SYNC = "sync API (producer and consumer threads)"
UVLOOP = "asyncio API under uvloop"
TARGET = 0.8  # the asyncio API at >= 0.8x the sync API's messages per second
RING_CAPACITY = 1024


def missing_peers() -> list[str]:
    if uvloop is None:
        return ["uvloop is not installed (pip install uvloop): the asyncio API under uvloop is left out"]
    return []


def _queue_name() -> str:
    return f"rbbench-aio-{uuid.uuid4().hex[:10]}"


def _bodies(n: int, batch: int) -> list[list[bytes]]:
    body = bytes(SIZE)
    return [[body] * min(batch, n - start) for start in range(0, n, batch)]


# --- the sync API ----------------------------------------------------------------------------------------------

def _sync_consumer(url: str, queue: str, n: int, ready: threading.Event, out: dict[str, Any]) -> None:
    try:
        with connect(url) as bus:
            messages = bus.consume(queue, prefetch=PREFETCH, timeout=CHILD_TIMEOUT)
            ready.set()
            got = 0
            for message in messages:
                message.ack()
                got += 1
                if got == n:
                    break
            # Acks need no reply; a call after them returns once the broker has applied every one.
            out["acked"] = bus.queue_stats(queue).acked
            out["t1"] = now()
    except BaseException as exc:  # noqa: BLE001 - reported by the producer's thread
        out["error"] = exc
        ready.set()


def sync_run(url: str, n: int, batch: int) -> float:
    queue = _queue_name()
    chunks = _bodies(n, batch)
    with connect(url) as bus:
        bus.declare_queue(queue)
        ready = threading.Event()
        out: dict[str, Any] = {}
        consumer = threading.Thread(target=_sync_consumer, args=(url, queue, n, ready, out), daemon=True)
        consumer.start()
        ready.wait(CHILD_TIMEOUT)
        t0 = now()
        if batch == 1:
            send, body = bus.send, chunks[0][0]
            for _ in repeat(None, n):
                send(queue, body)
        else:
            for chunk in chunks:
                bus.send_many(queue, chunk)
        consumer.join(CHILD_TIMEOUT)
    return _elapsed(out, n, t0)


def _elapsed(out: dict[str, Any], n: int, t0: float) -> float:
    if "error" in out:
        raise out["error"]
    if out.get("acked", 0) < n:
        raise RuntimeError(f"the broker counts {out.get('acked')} acks of {n}")
    return float(out["t1"] - t0)


# --- the asyncio API -------------------------------------------------------------------------------------------

async def _async_consumer(url: str, queue: str, n: int, ready: asyncio.Event, out: dict[str, Any]) -> None:
    async with ringbus.aio.connect(url) as bus:
        messages = bus.consume(queue, prefetch=PREFETCH, timeout=CHILD_TIMEOUT)
        ready.set()
        got = 0
        async for message in messages:
            await message.ack()
            got += 1
            if got == n:
                break
        await messages.aclose()
        out["acked"] = (await bus.queue_stats(queue)).acked
        out["t1"] = now()


async def _async_run(url: str, n: int, batch: int) -> float:
    queue = _queue_name()
    chunks = _bodies(n, batch)
    async with ringbus.aio.connect(url) as bus:
        await bus.declare_queue(queue)
        ready = asyncio.Event()
        out: dict[str, Any] = {}
        consumer = asyncio.ensure_future(_async_consumer(url, queue, n, ready, out))
        await asyncio.wait_for(ready.wait(), CHILD_TIMEOUT)
        t0 = now()
        if batch == 1:
            send, body = bus.send, chunks[0][0]
            for _ in repeat(None, n):
                await send(queue, body)
        else:
            for chunk in chunks:
                await bus.send_many(queue, chunk)
        await asyncio.wait_for(consumer, CHILD_TIMEOUT)
    return _elapsed(out, n, t0)


def _on_loop(factory: Callable[[], asyncio.AbstractEventLoop] | None,
             run: Callable[..., Awaitable[float]]) -> Callable[..., float]:
    def contender(*args: Any) -> float:
        loop = asyncio.new_event_loop() if factory is None else factory()
        try:
            return loop.run_until_complete(run(*args))
        finally:
            loop.close()
    return contender


async_run = _on_loop(None, _async_run)


# --- AsyncRing beside asyncio.Queue ----------------------------------------------------------------------------

async def _hand_over(n: int, put: Callable[[Any], Awaitable[None]], get: Callable[[], Awaitable[Any]]) -> float:
    async def produce() -> None:
        for i in range(n):
            await put(i)

    async def consume() -> None:
        for _ in repeat(None, n):
            await get()

    t0 = now()
    await asyncio.gather(produce(), consume())
    return now() - t0


async def _async_ring(n: int) -> float:
    ring: ringbus.aio.AsyncRing[int] = ringbus.aio.AsyncRing(RING_CAPACITY)
    return await _hand_over(n, ring.put, ring.get)


async def _asyncio_queue(n: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue(RING_CAPACITY)
    return await _hand_over(n, queue.put, queue.get)


# --- cases -----------------------------------------------------------------------------------------------------

def _through_broker(batch: int) -> dict[str, Callable[[int], float]]:
    """The contenders of one broker case: one shared broker child (each run on a fresh queue of its own)."""

    def with_broker(run: Callable[[str, int, int], float]) -> Callable[[int], float]:
        return lambda n: run(broker_url(), n, batch)

    contenders = {"ours": with_broker(async_run), SYNC: with_broker(sync_run)}
    if uvloop is not None:
        contenders[UVLOOP] = with_broker(_on_loop(uvloop.new_event_loop, _async_run))
    return contenders


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The asyncio-vs-sync comparisons; scale < 1 shortens every case."""
    del seed  # every message is alike

    def n(base: int) -> int:
        return max(BATCH * 2, int(base * scale) // BATCH * BATCH)

    out = []
    for batch, base, what in ((1, 20_000, "one confirmed send at a time"),
                              (BATCH, 100_000, f"send_many x{BATCH}")):
        contenders = _through_broker(batch)
        ours = contenders.pop("ours")
        out.append(Case(f"broker: {what} -> consume({PREFETCH}) + ack, {SIZE} B", "message", n(base),
                        ("asyncio API (two tasks, one loop)", ours), list(contenders.items()),
                        target={SYNC: TARGET}))
    out.append(Case(f"AsyncRing({RING_CAPACITY}) between two tasks", "put+get", n(200_000),
                    ("ringbus.aio.AsyncRing", _on_loop(None, _async_ring)),
                    [("asyncio.Queue", _on_loop(None, _asyncio_queue))]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparisons and print the table (``ringbus bench aio`` does the same with the others)."""
    from ringbus.bench.report import format_table

    parser = argparse.ArgumentParser(prog="python -m ringbus.bench.aio", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case; medians are compared (default 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="work per round relative to the default")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.scale <= 0:
        parser.error("--rounds must be >= 1 and --scale > 0")
    try:
        rows = [row for case in cases(args.scale) for row in run_case(case, args.rounds)]
    finally:
        shutdown()
    print(format_table(rows))
    for note in missing_peers():
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
