"""Order lifecycle events handled strictly in order per order, by 4 workers, with a held order (sequential convoy).

50 orders each send created -> paid -> packed -> shipped; the 200 events arrive interleaved. A
SequentialConvoy with 4 workers handles them: every order's events one at a time and in send order, different
orders at the same time. Order 17's payment fails every time (the card issuer is down for it), so after 3
attempts its order is held: "packed" and "shipped" wait, in order, while the other 49 orders finish. Then the
"fix" (the issuer is back) and release("order-17") run its held events in order.

Runs against an embedded broker in a thread of this process with a temporary data directory;
``--url memory://`` runs it in memory instead, ``--url tcp://host:port`` against a running ``ringbus broker``.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import threading
import time
from collections import defaultdict

import ringbus
from ringbus.patterns import RetryPolicy
from ringbus.patterns.convoy import SequentialConvoy, held_queue_name

EVENTS = ["created", "paid", "packed", "shipped"]
ORDERS = 50
BROKEN = "order-17"


class OrderService:
    """What the convoy's handler calls: applies one event to one order (a few ms of I/O)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.applied: dict[str, list[str]] = defaultdict(list)
        self.issuer_down = True  # the "fix" sets this to False
        self.rng = random.Random(3)

    def handle(self, message: ringbus.Message) -> None:
        order, event = message.key, message.body.decode()
        with self.lock:
            pause = self.rng.uniform(0.001, 0.003)
        time.sleep(pause)  # a database write, a call to the payment service ...
        if event == "paid" and order == BROKEN and self.issuer_down:
            raise ConnectionError(f"card issuer declined the capture of {order}: issuer unavailable")
        with self.lock:
            self.applied[order].append(event)


def interleaved_events(seed: int) -> list[ringbus.Message]:
    """Every order's four events in order, the orders shuffled into one stream."""
    rng = random.Random(seed)
    pending = {f"order-{i}": list(EVENTS) for i in range(ORDERS)}
    stream = []
    while pending:
        order = rng.choice(sorted(pending))
        stream.append(ringbus.Message(pending[order].pop(0).encode(), key=order))
        if not pending[order]:
            del pending[order]
    return stream


def wait_for(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.02)


def main(url: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="order-events-") as data:
        broker = None
        if url is None:
            broker = ringbus.Broker(data, "tcp://127.0.0.1:0").start()
            url = broker.endpoint
        try:
            return run(url)
        finally:
            if broker is not None:
                broker.stop()


def run(url: str) -> int:
    service = OrderService()
    queue = "order-events"
    convoy = SequentialConvoy(url, queue, service.handle, workers=4, max_attempts=3, on_failure="hold",
                              retry=RetryPolicy(base=0.02, max_delay=0.1))
    stream = interleaved_events(seed=7)
    with convoy:
        with ringbus.connect(url) as bus:
            bus.send_many(queue, stream)
            print(f"sent {len(stream)} events of {ORDERS} orders, interleaved; first ten: "
                  f"{[(m.key, m.body.decode()) for m in stream[:10]]}")
            convoy.wait_idle(20.0)
            wait_for(lambda: convoy.held_keys() == [BROKEN])
            held = bus.queue_stats(held_queue_name(queue, BROKEN))
            done = sum(1 for events in service.applied.values() if events == EVENTS)
            print(f"held: {convoy.held_keys()} ({convoy.hold_reason(BROKEN)})")
            print(f"  {BROKEN} so far: {service.applied[BROKEN]}; {held.depth} events waiting in its holding queue")
            print(f"  other orders complete meanwhile: {done}/{ORDERS - 1}")

            service.issuer_down = False  # the fix
            print(f"issuer back: release({BROKEN!r}) -> {convoy.release(BROKEN)}")
            wait_for(lambda: convoy.held_keys() == [] and len(service.applied[BROKEN]) == len(EVENTS))
            convoy.wait_idle(20.0)
        stats = convoy.stats()
    in_order = [order for order, events in service.applied.items() if events == EVENTS]
    print(f"  {BROKEN} now: {service.applied[BROKEN]}")
    print(f"every order's events in order: {len(in_order)}/{ORDERS}")
    print(f"stats: processed={stats.processed} failed={stats.failed} retried={stats.retried} "
          f"dead_lettered={stats.dead_lettered} parked={stats.parked} released={stats.released} "
          f"held_keys={stats.held_keys}")
    return 0 if len(in_order) == ORDERS and stats.processed == ORDERS * len(EVENTS) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="bus url (default: an embedded broker in this process)")
    logging.basicConfig(level=logging.WARNING, format="  log %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main(parser.parse_args().url))
