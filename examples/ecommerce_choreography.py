"""E-commerce by choreography: Order, Payment, Inventory, Shipping and Notification services as separate
processes, reacting to each other's events through an embedded broker - no coordinator.

    OrderPlaced -> PaymentCompleted -> StockReserved -> OrderShipped            (the happy path)
    OrderPlaced -> PaymentFailed -> OrderCancelled                              (card declined)
    PaymentCompleted -> StockUnavailable -> PaymentRefunded -> OrderCancelled   (compensation)
    OrderShipped | OrderCancelled -> CustomerNotified                          (added later, nobody changed)

Every 10th order has a declined card, every 25th asks for an item that is out of stock, and the payment
gateway times out once on every 50th (the handler raises; the event is retried). An event log (SQLite)
records every event, so each order's flow can be traced by its correlation id.

Run: python examples/ecommerce_choreography.py [--orders 1000]
"""

from __future__ import annotations

import argparse
import selectors
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import ringbus
from ringbus.patterns.choreography import Context, Event, EventLog, Service

DECLINED_CARD = "4000-0000-0000-0002"
OUT_OF_STOCK = "sku-rare"
TERMINAL = ("OrderShipped", "OrderCancelled")


def make_order(i: int) -> dict[str, object]:
    """Order number ``i``: 10% with a declined card, 4% (others) for an item out of stock."""
    return {"order_id": f"order-{i:05d}", "amount": 10 + i % 90,
            "card": DECLINED_CARD if i % 10 == 3 else "4242-4242-4242-4242",
            "sku": OUT_OF_STOCK if i % 25 == 7 else f"sku-{i % 5}"}


# --- the services: each one knows only the events it reacts to ----------------------------------------------

def order_service(url: str) -> Service:
    service = Service(url, "order")

    @service.on("PaymentFailed")
    def payment_failed(event: Event, ctx: Context) -> None:
        ctx.emit("OrderCancelled", {**event.data, "reason": "payment failed", "refunded": False})

    @service.on("PaymentRefunded")
    def refunded(event: Event, ctx: Context) -> None:
        ctx.emit("OrderCancelled", {**event.data, "reason": "out of stock", "refunded": True})

    return service


def payment_service(url: str) -> Service:
    service = Service(url, "payment")
    timed_out: set[str] = set()

    @service.on("OrderPlaced")
    def charge(event: Event, ctx: Context) -> None:
        order = event.data
        number = int(order["order_id"].split("-")[1])
        if number % 50 == 1 and order["order_id"] not in timed_out:
            timed_out.add(order["order_id"])
            raise TimeoutError(f"payment gateway timed out for {order['order_id']}")  # retried by the pattern
        if order["card"] == DECLINED_CARD:
            ctx.emit("PaymentFailed", {**order, "error": "card declined"})
        else:
            ctx.emit("PaymentCompleted", {**order, "payment_id": f"pay-{event.id[:8]}"})

    @service.on("StockUnavailable")
    def refund(event: Event, ctx: Context) -> None:
        ctx.emit("PaymentRefunded", {**event.data, "refund_of": event.data["payment_id"]})

    return service


def inventory_service(url: str) -> Service:
    service = Service(url, "inventory")
    stock = {OUT_OF_STOCK: 0}

    @service.on("PaymentCompleted")
    def reserve(event: Event, ctx: Context) -> None:
        sku = event.data["sku"]
        if stock.get(sku, 1_000_000) > 0:
            stock[sku] = stock.get(sku, 1_000_000) - 1
            ctx.emit("StockReserved", event.data)
        else:
            ctx.emit("StockUnavailable", event.data)

    return service


def shipping_service(url: str) -> Service:
    service = Service(url, "shipping")

    @service.on("StockReserved")
    def ship(event: Event, ctx: Context) -> None:
        ctx.emit("OrderShipped", {**event.data, "tracking": f"TRK{event.id[:10].upper()}"})

    return service


def notification_service(url: str) -> Service:
    """Added after the others went live: it subscribes to their events; none of them changed."""
    service = Service(url, "notification")

    @service.on("OrderShipped")
    def shipped(event: Event, ctx: Context) -> None:
        ctx.emit("CustomerNotified", {"order_id": event.data["order_id"], "text": "your order is on its way"})

    @service.on("OrderCancelled")
    def cancelled(event: Event, ctx: Context) -> None:
        ctx.emit("CustomerNotified", {"order_id": event.data["order_id"],
                                      "text": f"order cancelled ({event.data['reason']})"})

    return service


SERVICES = {"order": order_service, "payment": payment_service, "inventory": inventory_service,
            "shipping": shipping_service, "notification": notification_service}


def place_orders(order: Service, count: int) -> None:
    """The shop front: one OrderPlaced per order, each the start of a flow (correlation id = order id)."""
    for i in range(count):
        data = make_order(i)
        order.emit("OrderPlaced", data, correlation_id=str(data["order_id"]))


# --- one service in a process of its own ----------------------------------------------------------------------

def serve(name: str, url: str, orders: int) -> None:
    """Child process: run one service until standard input closes, then print its counts."""
    service = SERVICES[name](url).start()
    print(f"ready {name}", flush=True)
    if orders:
        place_orders(service, orders)
    sys.stdin.read()  # the parent closes our stdin to stop us (and if the parent dies, so does our stdin)
    service.stop()
    stats = service.stats()
    print(f"stats {name} handled={stats.processed} emitted={stats.emitted} failed={stats.failed} "
          f"retried={stats.retried} duplicates={stats.duplicates}", flush=True)


def spawn(name: str, url: str, orders: int = 0) -> subprocess.Popen[str]:
    """Start ``name`` in a child process; return once it says it is ready (all its groups attached)."""
    process = subprocess.Popen([sys.executable, __file__, "--service", name, "--url", url, "--orders", str(orders)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=30.0):
            process.kill()
            process.communicate()
            raise TimeoutError(f"service {name} did not start within 30 s")
    line = process.stdout.readline()
    if line.strip() != f"ready {name}":
        process.kill()
        process.communicate()
        raise RuntimeError(f"service {name} failed to start: {line!r}")
    return process


def finish(processes: list[subprocess.Popen[str]]) -> list[str]:
    """Close each child's stdin (it stops), wait, and return the last line each printed."""
    lines = []
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
    for process in processes:
        assert process.stdout is not None
        out = process.stdout.read()
        process.stdout.close()
        process.wait(30.0)
        lines.append(out.strip().splitlines()[-1] if out.strip() else f"(exit {process.returncode})")
    return lines


def wait_for_flows(log: EventLog, orders: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while log.count(*TERMINAL) < orders or log.count("CustomerNotified") < orders:
        if time.monotonic() > deadline:
            raise TimeoutError(f"after {timeout} s: {log.count(*TERMINAL)} of {orders} orders finished")
        time.sleep(0.1)


def chain(flow: list[Event]) -> str:
    """The causation chain of a flow, from its first event to its last, as 'A -> B -> C'."""
    by_id = {event.id: event for event in flow}
    event: Event | None = flow[-1]
    names = []
    while event is not None:
        names.append(event.name)
        event = by_id.get(event.causation_id) if event.causation_id else None
    return " -> ".join(reversed(names))


def main(orders: int) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ringbus-shop-") as data, \
            ringbus.Broker(Path(data) / "broker", "tcp://127.0.0.1:0") as broker:
        url = broker.endpoint
        with EventLog(url, Path(data) / "log") as log:
            children = [spawn(name, url) for name in ("payment", "inventory", "shipping", "notification")]
            children.append(spawn("order", url, orders))  # places the orders once everyone listens
            try:
                wait_for_flows(log, orders, timeout=60.0)
            finally:
                stats = finish(children)
            elapsed = time.monotonic() - started
            outcomes: Counter[str] = Counter()
            examples: dict[str, str] = {}
            for cid in log.correlation_ids():
                flow = log.flow(cid)
                terminal = [event for event in flow if event.name in TERMINAL]
                kind = terminal[0].name if terminal else "stuck"
                if kind == "OrderCancelled":
                    kind += " (refunded)" if terminal[0].data["refunded"] else " (payment failed)"
                outcomes[kind] += 1
                examples.setdefault(kind, f"{cid}: {chain(flow)}")
            print(f"{orders} orders through 5 service processes in {elapsed:.1f} s; "
                  f"{log.count()} events in the event log")
            for kind in ("OrderShipped", "OrderCancelled (payment failed)", "OrderCancelled (refunded)", "stuck"):
                print(f"  {kind:32s} {outcomes[kind]:5d}")
            print(f"  customers notified               {log.count('CustomerNotified'):5d}")
            print("one flow of each kind, traced by correlation id:")
            for kind, text in examples.items():
                print(f"  {text}")
            for line in stats:
                print(f"  {line}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--service", choices=sorted(SERVICES), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.service:
        serve(args.service, args.url, args.orders)
    else:
        main(args.orders)
