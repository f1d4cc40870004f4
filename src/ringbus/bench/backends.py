"""``ringbus bench backends``: what the Bus adapter costs on each engine (issue 8: ">= 0.85x the same operations
written directly with that backend's own client", i.e. an overhead of at most 15%).

For each engine that answers on loopback (Redis 6379, RabbitMQ 5672, NATS 4222), one thread does the same work
twice in one run: n confirmed sends of 64 B one at a time, then n deliveries with a prefetch window of 64, each
acked - once through ``ringbus.connect(url)`` (ringbus's row) and once with the engine's own client doing what
the adapter does at the wire (the peer row):

- Redis: ``XADD`` per send; ``XREADGROUP COUNT 64`` and ``XACK`` per message (redis-py). ringbus runs one Lua
  script per send and per ack, which also keeps its counters, key locks and delayed set.
- RabbitMQ: ``basic_publish`` with publisher confirms per message; ``basic_consume`` with ``basic_qos(64)`` and
  ``basic_ack`` per message (pika BlockingConnection).
- NATS: JetStream ``publish`` awaiting its ack per message; a durable pull consumer, ``fetch(64)`` and ``ack``
  per message (nats-py).

The ratio is raw time / ringbus time: 1.0 means no overhead, the target is 0.85.
``python -m ringbus.bench.backends --scale 0.1`` runs it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from ringbus.bench._harness import Case, timed
from ringbus.bus import connect

__all__ = ["cases", "main", "missing_peers", "TARGET"]

TARGET = 0.85  # raw client time / ringbus time
SIZE = 64
PREFETCH = 64
HOST = "127.0.0.1"
ENGINES = {"redis": 6379, "amqp": 5672, "nats": 4222}
CLIENTS = {"redis": "redis", "amqp": "pika", "nats": "nats"}


@functools.cache
def _why_missing(engine: str) -> str | None:
    """Why an engine's case is left out, or None if its server answers and its client imports."""
    module = CLIENTS[engine]
    try:
        __import__(module)
    except ImportError:
        return f"{engine}: its client {module!r} is not installed (pip install -e '.[bench]'); its case is left out"
    try:
        socket.create_connection((HOST, ENGINES[engine]), timeout=1.0).close()
    except OSError as exc:
        return f"{engine}: no server answers on {HOST}:{ENGINES[engine]} ({exc.strerror}); its case is left out"
    return None


def missing_peers() -> list[str]:
    return [why for why in map(_why_missing, ENGINES) if why]


def _ringbus(url: str, n: int) -> float:
    """n sends, then n consumed + acked through the Bus; a fresh prefix per round, dropped afterwards."""
    body = bytes(SIZE)
    with connect(url) as bus:
        queue = f"bench-{uuid.uuid4().hex[:8]}"
        bus.declare_queue(queue)
        try:
            def work() -> None:
                send = bus.send
                for _ in range(n):
                    send(queue, body)
                left = n
                for message in bus.consume(queue, prefetch=PREFETCH, timeout=30.0):
                    message.ack()
                    left -= 1
                    if not left:
                        break
                if left:
                    raise RuntimeError(f"{left} of {n} messages did not come back through {url}")

            return timed(work)
        finally:
            drop = getattr(bus, "drop_namespace", None)
            if drop is not None:
                drop()


def _ringbus_url(engine: str) -> str:
    prefix = f"rbbench-{uuid.uuid4().hex[:8]}"
    if engine == "redis":
        return f"redis://{HOST}:6379/0?prefix={prefix}:"
    if engine == "amqp":
        return f"amqp://guest:guest@{HOST}:5672/%2F?prefix={prefix}."
    return f"nats://{HOST}:4222?prefix={prefix}."


def ringbus_round(engine: str) -> Callable[[int], float]:
    return lambda n: _ringbus(_ringbus_url(engine), n)


# --- the engines' own clients ----------------------------------------------------------------------------------

def redis_raw(n: int) -> float:
    import redis

    client = redis.Redis(host=HOST, port=6379)
    stream = f"rbbench-raw-{uuid.uuid4().hex[:8]}"
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    body = bytes(SIZE)
    try:
        def work() -> None:
            for _ in range(n):
                client.xadd(stream, {"b": body})
            left = n
            while left:
                # RESP2, redis-py's default: [[stream, [(id, fields), ...]]], or None when the block timed out
                reply = cast("list[list[Any]] | None",
                             client.xreadgroup("g", "c", {stream: ">"}, count=PREFETCH, block=30_000))
                for _, entries in reply or ():
                    for entry_id, _fields in entries:
                        client.xack(stream, "g", entry_id)
                        left -= 1

        return timed(work)
    finally:
        client.delete(stream)
        client.close()


def rabbit_raw(n: int) -> float:
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters(
        HOST, 5672, credentials=pika.PlainCredentials("guest", "guest")))
    channel = connection.channel()
    channel.confirm_delivery()
    queue = f"rbbench-raw-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, durable=True, arguments={"x-max-priority": 10})
    properties = pika.BasicProperties(delivery_mode=2)
    body = bytes(SIZE)
    try:
        def work() -> None:
            for _ in range(n):
                channel.basic_publish("", queue, body, properties, mandatory=True)
            channel.basic_qos(prefetch_count=PREFETCH)
            left = n
            for method, _props, _body in channel.consume(queue, inactivity_timeout=30.0):
                if method is None:
                    raise RuntimeError(f"{left} of {n} messages did not come back from RabbitMQ")
                channel.basic_ack(method.delivery_tag)
                left -= 1
                if not left:
                    break
            channel.cancel()

        return timed(work)
    finally:
        channel.queue_delete(queue)
        connection.close()


def nats_raw(n: int) -> float:
    import nats

    async def run() -> float:
        nc = await nats.connect(f"nats://{HOST}:4222")
        js = nc.jetstream()
        stream = f"rbbench_raw_{uuid.uuid4().hex[:8]}"
        await js.add_stream(name=stream, subjects=[f"{stream}.q"])
        body = bytes(SIZE)
        try:
            sub = await js.pull_subscribe(f"{stream}.q", durable="c", stream=stream)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for _ in range(n):
                await js.publish(f"{stream}.q", body, stream=stream)
            left = n
            while left:
                for message in await sub.fetch(min(PREFETCH, left), timeout=30.0):
                    await message.ack()
                    left -= 1
            await nc.flush()
            return loop.time() - t0
        finally:
            await js.delete_stream(stream)
            await nc.close()

    return asyncio.run(run())


RAW: dict[str, tuple[str, Callable[[int], float]]] = {
    "redis": ("redis-py: XADD each; XREADGROUP COUNT 64, XACK each", redis_raw),
    "amqp": ("pika: publish + confirm each; consume, qos 64, basic_ack each", rabbit_raw),
    "nats": ("nats-py: JetStream publish + ack each; pull fetch(64), ack each", nats_raw),
}


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """One case per engine that answers here; scale < 1 shortens each."""
    n = max(PREFETCH * 2, int(2_000 * scale))
    found = []
    for engine in ENGINES:
        if _why_missing(engine) is None:
            label, raw = RAW[engine]
            found.append(Case(f"{engine}:// send, then consume({PREFETCH}) + ack, {SIZE} B", "message", n,
                              (f"ringbus {engine}:// Bus", ringbus_round(engine)), [(label, raw)],
                              target={label: TARGET}))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparisons and print the table (``ringbus bench backends`` does the same)."""
    from ringbus.bench._harness import run_case
    from ringbus.bench.report import format_table

    parser = argparse.ArgumentParser(prog="python -m ringbus.bench.backends", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case; medians are compared (default 5)")
    parser.add_argument("--scale", type=float, default=1.0, help="work per round relative to the default")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.scale <= 0:
        parser.error("--rounds must be >= 1 and --scale > 0")
    rows: list[Any] = []
    for case in cases(args.scale):
        rows.extend(run_case(case, args.rounds))
    for why in missing_peers():
        print(why)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
