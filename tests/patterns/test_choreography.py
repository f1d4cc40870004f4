"""Choreography: services that react to events, correlation and causation carried, flows traced in the event
log - 1,000 orders through the e-commerce services (threads on memory://, processes on the broker)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from types import ModuleType

import pytest

import ringbus
from ringbus.message import Message
from ringbus.patterns.choreography import CORRELATION_HEADER, EVENT_HEADER, Context, Event, EventLog, Service

from .bus_fixtures import ROOT, WAIT, run_python, wait_until
from .test_pubsub import several_groups_at_once

pytestmark = pytest.mark.timeout(180)

ORDERS = 1000


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ecommerce_choreography", ROOT / "examples" /
                                                  "ecommerce_choreography.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


shop = _load_example()

HAPPY = ["OrderPlaced", "PaymentCompleted", "StockReserved", "OrderShipped", "CustomerNotified"]
DECLINED = ["OrderPlaced", "PaymentFailed", "OrderCancelled", "CustomerNotified"]
REFUNDED = ["OrderPlaced", "PaymentCompleted", "StockUnavailable", "PaymentRefunded", "OrderCancelled",
            "CustomerNotified"]
SOURCES = {"OrderPlaced": "order", "PaymentCompleted": "payment", "PaymentFailed": "payment",
           "PaymentRefunded": "payment", "StockReserved": "inventory", "StockUnavailable": "inventory",
           "OrderShipped": "shipping", "OrderCancelled": "order", "CustomerNotified": "notification"}


def expected_flow(number: int) -> list[str]:
    if number % 10 == 3:
        return DECLINED
    if number % 25 == 7:
        return REFUNDED
    return HAPPY


def test_1000_orders_each_ends_shipped_or_cancelled_and_is_traceable(url: str, tmp_path: Path) -> None:
    """10% declined cards, 4% out of stock, 2% gateway timeouts (retried): every flow reaches its end."""
    several_groups_at_once(url)  # the log and the services take the same events
    on_broker = not url.startswith("memory://")
    with EventLog(url, tmp_path / "log") as log:
        if on_broker:  # each service a process of its own
            children = [shop.spawn(name, url) for name in ("payment", "inventory", "shipping", "notification")]
            children.append(shop.spawn("order", url, ORDERS))
            services: list[Service] = []
        else:  # each service its own threads
            services = [shop.SERVICES[name](url).start() for name in shop.SERVICES]
            shop.place_orders(services[0], ORDERS)
        try:
            wait_until(lambda: log.count(*shop.TERMINAL) == ORDERS and log.count("CustomerNotified") == ORDERS,
                       "every order shipped or cancelled, and its customer notified", timeout=150.0)
        finally:
            lines = shop.finish(children) if on_broker else [str(s.stop(WAIT)) for s in services]
        flows = {cid: log.flow(cid) for cid in log.correlation_ids()}
        log_stats = log.stats()
    assert len(flows) == ORDERS
    outcomes = {"shipped": 0, "declined": 0, "refunded": 0}
    for cid, flow in flows.items():
        number = int(cid.split("-")[1])
        names = [event.name for event in flow]
        assert names == expected_flow(number), cid  # nothing stuck, nothing twice, in causal order
        assert flow[0].causation_id is None and flow[0].correlation_id == cid
        for cause, effect in pairwise(flow):
            assert effect.causation_id == cause.id and effect.correlation_id == cid  # carried automatically
        assert [event.source for event in flow] == [SOURCES[name] for name in names]
        assert flow[-1].data["order_id"] == cid
        outcomes["shipped" if names == HAPPY else "declined" if names == DECLINED else "refunded"] += 1
    assert outcomes == {"shipped": 860, "declined": 100, "refunded": 40}
    assert log_stats.stored == 860 * 5 + 100 * 4 + 40 * 6
    if on_broker:
        assert any(line.startswith("stats payment") and "retried=20" in line for line in lines), lines
    else:
        assert services[1].stats().retried == 20  # payment: 2% of orders timed out once and were retried


@pytest.fixture
def fresh_url(url: str, tmp_path: Path) -> Iterator[str]:
    """``url``, but on a broker of its own: the test counts what a new group replays from the whole topic."""
    if url.startswith("memory://"):
        yield url
        return
    with ringbus.Broker(tmp_path / "broker", "tcp://127.0.0.1:0") as broker:
        yield broker.endpoint


def test_a_service_that_was_down_catches_up_and_a_new_one_needs_no_change(fresh_url: str, tmp_path: Path) -> None:
    url = fresh_url
    several_groups_at_once(url)
    payment, order, inventory = (shop.SERVICES[name](url) for name in ("payment", "order", "inventory"))
    with EventLog(url, tmp_path / "log") as log, payment, order:
        inventory.start()
        inventory.stop()  # its groups exist: what is published for it from now on waits
        shop.place_orders(order, 50)
        wait_until(lambda: log.count("PaymentCompleted") == 45, "45 payments done, inventory still down")
        assert log.count("StockReserved", "StockUnavailable") == 0
        with shop.SERVICES["inventory"](url):  # back: it catches up on the 45 it missed
            wait_until(lambda: log.count("StockReserved", "StockUnavailable") == 45, "inventory caught up")
        # Shipping and notification were never deployed; a new service starting from the earliest retained
        # event still sees every reservation - the other services did not change.
        shipped: list[str] = []
        late = Service(url, "warehouse-report", start="earliest")

        @late.on("StockReserved")
        def report(event: Event, ctx: Context) -> None:
            shipped.append(event.data["order_id"])

        with late:
            wait_until(lambda: len(shipped) == 43, "the late service saw every reservation")
        assert log.count("StockUnavailable") == 2 and len(set(shipped)) == 43


def test_correlation_causation_and_repeated_events(url: str, tmp_path: Path) -> None:
    several_groups_at_once(url)
    prefix = f"ev{uuid.uuid4().hex[:8]}"
    greeter = Service(url, "greeter", prefix=prefix)
    handled: list[Event] = []

    @greeter.on("Hello")
    def hello(event: Event, ctx: Context) -> None:
        handled.append(event)
        first = ctx.emit("Greeted", {"to": event.data["name"]})
        second = ctx.emit("Counted", None)
        assert first != second

    with EventLog(url, tmp_path / "log", prefix=prefix, group=f"log-{prefix}") as log, greeter:
        origin = greeter.emit("Hello", {"name": "ada"}, correlation_id="flow-1")
        wait_until(lambda: log.count() == 3, "Hello, Greeted and Counted in the log")
        # The same event again (a redelivery after a crash, a re-emit): handled once, stored once.
        with ringbus.connect(url) as bus:
            bus.publish(f"{prefix}.Hello", Message(b'{"name":"ada"}', id=origin.id, content_type="application/json",
                                                   headers={EVENT_HEADER: "Hello", CORRELATION_HEADER: "flow-1"}))
            wait_until(lambda: greeter.stats().duplicates == 1 and log.stats().duplicates == 1, "the repeat seen")
        flow = log.flow("flow-1")
        stats = greeter.stats()
    assert [e.name for e in flow] == ["Hello", "Greeted", "Counted"] and len(handled) == 1
    assert origin.correlation_id == "flow-1" and origin.causation_id is None and origin.source == "greeter"
    assert [e.causation_id for e in flow] == [None, origin.id, origin.id]
    assert {e.correlation_id for e in flow} == {"flow-1"} and flow[1].data == {"to": "ada"}
    assert (stats.processed, stats.emitted, stats.duplicates) == (2, 3, 1)  # the repeat: acked, not handled


def test_bad_arguments_name_what_is_wrong(tmp_path: Path) -> None:
    service = Service("memory://bad-choreography", "billing")
    with pytest.raises(ValueError, match="event name"):
        service.on("Order.Placed")
    service.on("OrderPlaced")(lambda event, ctx: None)
    with pytest.raises(ValueError, match="already has a handler"):
        service.on("OrderPlaced")
    with pytest.raises(ValueError, match="service name"):
        Service("memory://", "no spaces")
    with pytest.raises(TypeError, match="url"):
        Service(None, "billing")  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            service.emit("OrderPlaced", {})
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(WAIT)
    assert len(errors) == 1 and "thread" in str(errors[0])


def test_example_ecommerce_choreography() -> None:
    result = run_python(str(ROOT / "examples" / "ecommerce_choreography.py"), "--orders", "300", timeout=120.0)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "OrderShipped                       258" in out and "stuck                                0" in out, out

