"""Order events fanned out to billing, analytics and a live dashboard through an embedded broker.

- billing   (durable group "billing", 2 workers, orders.*.placed): must see every placed order, even after
            it was down - it catches up from the broker's log on return;
- analytics (durable group "analytics", orders.#): every order event, in publish order;
- dashboard (ephemeral, orders.#): live view only - what is published while it is away is gone;
- audit     (a durable group created late with start="earliest", and one with since=): replay.

Run: python examples/pubsub_orders.py
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import ringbus
from ringbus.message import Message
from ringbus.patterns.pubsub import Publisher, Subscriber, topic_of

REGIONS = ("eu", "us", "apac")


class Tally:
    """A handler that counts events by topic (thread-safe: billing has two workers)."""

    def __init__(self) -> None:
        self.by_topic: Counter[str] = Counter()
        self.revenue = 0
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        order = message.value()
        with self.lock:
            self.by_topic[topic_of(message)] += 1
            if topic_of(message).endswith(".placed"):
                self.revenue += order["amount"]

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.by_topic.values())


def wait(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the subscribers did not catch up in time")
        time.sleep(0.02)


def publish_orders(publisher: Publisher, first: int, count: int) -> int:
    """``count`` orders placed (by region, 100 per publish_many), one in ten of them cancelled again."""
    events = 0
    for region in REGIONS:
        numbers = [n for n in range(first, first + count) if n % len(REGIONS) == REGIONS.index(region)]
        for start in range(0, len(numbers), 100):
            chunk = numbers[start:start + 100]
            publisher.publish_many(f"orders.{region}.placed", [{"order": n, "amount": 20 + n % 80} for n in chunk])
            cancelled = [{"order": n, "amount": 0} for n in chunk if n % 10 == 0]
            publisher.publish_many(f"orders.{region}.cancelled", cancelled)
            events += len(chunk) + len(cancelled)
    return events


def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ringbus-orders-") as data, \
            ringbus.Broker(Path(data), "tcp://127.0.0.1:0") as broker, ringbus.connect(broker.endpoint) as bus:
        url = broker.endpoint
        billing, analytics, dashboard = Tally(), Tally(), Tally()
        billing_sub = Subscriber(url, "orders.*.placed", billing, group="billing", durable=True, workers=2).start()
        analytics_sub = Subscriber(url, "orders.#", analytics, group="analytics", durable=True).start()
        dashboard_sub = Subscriber(url, "orders.#", dashboard).start()
        publisher = Publisher(bus, name="shop")

        events = publish_orders(publisher, 0, 3000)
        wait(lambda: billing.total == 3000 and analytics.total == events and dashboard.total == events)
        print(f"published {events} events (3000 orders placed, {events - 3000} cancelled); "
              f"billing {billing.total}, analytics {analytics.total}, dashboard {dashboard.total}")

        billing_sub.stop()  # billing is redeployed, the dashboard tab is closed
        dashboard_stats = dashboard_sub.stats()
        dashboard_sub.stop()
        more = publish_orders(publisher, 3000, 3000)
        print(f"while billing and the dashboard were away: {more} more events; "
              f"{bus.queue_stats('@billing').depth} orders wait for billing in the broker's log")

        billing_sub = Subscriber(url, "orders.*.placed", billing, group="billing", durable=True, workers=2).start()
        dashboard_back = Tally()
        dashboard_sub = Subscriber(url, "orders.#", dashboard_back).start()
        last = publish_orders(publisher, 6000, 300)
        wait(lambda: billing.total == 6300 and analytics.total == events + more + last
             and dashboard_back.total == last)
        print(f"billing caught up: {billing.total - 300} of 6000 orders (+300 new), revenue {billing.revenue}; "
              f"analytics has all {analytics.total}")
        print(f"dashboard: {dashboard_stats.received} before, then missed the {more} published while away, "
              f"{dashboard_back.total} after; dropped {dashboard_sub.stats().dropped} (it kept up)")

        audit = Tally()
        with Subscriber(url, "orders.*.cancelled", audit, group="audit", durable=True, start="earliest"):
            cancellations = events - 3000 + more - 3000 + last - 300
            wait(lambda: audit.total == cancellations)
        print(f"audit (new group, start='earliest') replayed {audit.total} cancellations from the retained log")
        cut = time.time()
        time.sleep(0.01)
        recent = Tally()
        newest = publish_orders(publisher, 6300, 30)
        with Subscriber(url, "orders.#", recent, group="recent", durable=True, since=cut) as since:
            wait(lambda: recent.total == newest)
            skipped = since.stats().skipped
        print(f"a new group with since=<time before the last {newest} events>: {recent.total} handled, "
              f"{skipped} older ones skipped")

        for subscriber in (billing_sub, analytics_sub, dashboard_sub):
            subscriber.stop()
        print(f"done in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
