"""Order processing with competing consumers: 4 worker processes share one queue of orders.

Of 200 orders, 2 meet a flaky inventory service on their first attempt (retried with backoff, then
processed), 4 have an impossible quantity (they fail every attempt and, after the queue's max_attempts,
go to the dead-letter queue) and 2 are malformed (the handler raises Reject: dead-lettered at once).
Every dead letter carries the error that killed it in its headers.

    python examples/order_processing.py

It starts an embedded broker in a thread with a temporary data directory; the workers are separate
processes connected to it over TCP, as they would be to ``ringbus broker`` on another host.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

import ringbus
from ringbus.message import Message
from ringbus.patterns import RetryPolicy
from ringbus.patterns.competing_consumers import Reject, WorkerPool

QUEUE = "orders"


def handle_order(message: Message) -> None:
    """One order: validate it, reserve stock, charge. Raise to retry, Reject to give up at once."""
    try:
        order = json.loads(bytes(message.body))
    except ValueError:
        raise Reject("malformed order: the body is not JSON") from None
    if "customer" not in order:
        raise Reject(f"order {order.get('id')} has no customer")
    if order["quantity"] <= 0:
        raise ValueError(f"order {order['id']}: quantity {order['quantity']} is not positive")
    if order.get("flaky") and message.attempts == 0:
        raise ConnectionError("inventory service timed out")
    # reserve stock, charge the card, ... (nothing here: the point is what happens around the handler)


def orders() -> list[bytes]:
    bodies = []
    for i in range(1, 195):
        order = {"id": i, "customer": f"c-{i % 17}", "sku": f"sku-{i % 5}", "quantity": 1 + i % 3}
        if i in (50, 150):
            order["flaky"] = True
        bodies.append(json.dumps(order).encode())
    for i in (195, 196, 197, 198):
        bodies.append(json.dumps({"id": i, "customer": "c-1", "sku": "sku-1", "quantity": -i}).encode())
    bodies.append(json.dumps({"id": 199, "sku": "sku-2", "quantity": 1}).encode())
    bodies.append(b"<order id='200'/>")
    return bodies


def main() -> int:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="orders-") as data, ringbus.Broker(data, "tcp://127.0.0.1:0") as broker:
        url = broker.endpoint
        with ringbus.connect(url) as bus:
            bus.declare_queue(QUEUE, max_attempts=3)
            bus.send_many(QUEUE, orders())
            pool = WorkerPool(url, QUEUE, handle_order, workers=4, mode="process", prefetch=8,
                              retry=RetryPolicy(base=0.05, max_delay=0.5), declare={"max_attempts": 3})
            with pool:
                print(f"4 worker processes {pool.pids} consume {QUEUE!r} at {url}")
                deadline = time.monotonic() + 25.0
                while (stats := pool.stats()).processed + stats.dead_lettered < 200:
                    if time.monotonic() > deadline:
                        print(f"gave up waiting: {stats}")
                        return 1
                    time.sleep(0.05)
            stats = pool.stats()
            dead = []
            while (letter := bus.receive(f"{QUEUE}.dlq", timeout=0.5)) is not None:
                letter.ack()
                dead.append(letter)
            queue = bus.queue_stats(QUEUE)
    print(f"processed {stats.processed}, retried {stats.retried}, dead-lettered {stats.dead_lettered} "
          f"(of 200 orders; {stats.failed} handler failures; {time.monotonic() - start:.1f} s)")
    print(f"queue {QUEUE!r}: {queue.acked} acked, {queue.depth} waiting, {queue.in_flight} in flight")
    for letter in sorted(dead, key=lambda m: bytes(m.body)):
        print(f"  dead letter after {letter.headers['ringbus-attempts']} attempt(s), "
              f"{letter.headers['ringbus-dead-reason']}: {letter.headers['ringbus-error']}")
    return 0 if (stats.processed, stats.dead_lettered, len(dead)) == (194, 6, 6) else 1


if __name__ == "__main__":
    sys.exit(main())
