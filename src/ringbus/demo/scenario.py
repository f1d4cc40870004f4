"""The demo's e-commerce scenario: the orders (seeded), the business rules that fail some, the names on the bus,
the order lifecycle the convoy checks, and the accounting that says whether an order was lost.

Nothing here touches a bus: the services (:mod:`ringbus.demo.services`) and the runner (:mod:`ringbus.demo.run`)
share these definitions, so both sides agree on what each order should end as.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    # names on the bus, and how the runner talks to its service processes
    "CHECKOUT_QUEUE", "ORDERS_QUEUE", "EVENTS_QUEUE", "INVOICES_QUEUE", "ENGINE", "WORKFLOW", "LEVELS",
    "JOB_PRIORITY", "FINAL_TOPIC", "READY_PREFIX", "STATS_PREFIX", "TOKEN_ENV",
    # the scenario
    "STEPS", "COMPENSATION_EVENTS", "make_orders", "expected_outcome", "failure_reason", "flaky_payment",
    "invoice_lines", "render_invoice",
    # checking it
    "Lifecycle", "Accounting", "account", "percentile",
]

# -- names on the bus -----------------------------------------------------------------------------------------------
CHECKOUT_QUEUE = "shop.checkout"  # the HTTP gateway's job queue (async request-reply)
ORDERS_QUEUE = "shop.orders"  # accepted orders, premium first (priority queue)
EVENTS_QUEUE = "shop.order-events"  # lifecycle events, one convoy per order id (sequential convoy)
INVOICES_QUEUE = "shop.invoices"  # invoice documents, large ones by claim check
ENGINE = "shop"  # the workflow engine's queues: shop.tasks, shop.results
WORKFLOW = "order"
FINAL_TOPIC = "order"  # notifications are published on order.completed / order.compensated

# How the runner and its service processes talk: a service prints READY_PREFIX + its name (+ a detail) once
# attached, and STATS_PREFIX + JSON when it stops; the gateway's bearer token comes in the environment.
READY_PREFIX = "ready "
STATS_PREFIX = "stats "
TOKEN_ENV = "RINGBUS_DEMO_TOKEN"

LEVELS = {"premium": 1, "standard": 0}  # PrioritySender levels on shop.orders
JOB_PRIORITY = {"premium": 2, "standard": 0}  # priority of the checkout job on the gateway's queue

# The workflow's steps: (step, action, event on success, compensation action, event on compensation).
STEPS = (
    ("payment", "charge_card", "paid", "refund_payment", "refunded"),
    ("inventory", "reserve_stock", "reserved", "release_stock", "released"),
    ("invoice", "issue_invoice", "invoiced", "void_invoice", "invoice_voided"),
    ("shipping", "ship", "shipped", None, None),
)
STEP_EVENTS = {event: step for step, _, event, _, _ in STEPS}
COMPENSATION_EVENTS = {undo: step for step, _, _, _, undo in STEPS if undo}
FAILURE_EVENTS = {"payment_declined": "payment", "out_of_stock": "inventory", "undeliverable": "shipping"}

# -- the business rules ---------------------------------------------------------------------------------------------
DECLINED_CARD = "4000-0000-0000-0002"  # the payment provider declines it: nothing to undo
GOOD_CARD = "4242-4242-4242-4242"
SOLD_OUT_SKU = "sku-vintage-lamp"  # the warehouse has none: the payment is refunded
NOWHERE = "00000"  # the carrier cannot deliver to this postcode: invoice voided, stock released, refunded
SKUS = ("sku-headphones", "sku-keyboard", "sku-monitor", "sku-webcam", "sku-desk-mat", "sku-usb-hub")
BULK_LINES = 75_000  # line items of a bulk (B2B) order: its invoice is a few MiB, sent by claim check


def make_orders(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` orders drawn with ``seed``: about 25% premium, 7% with a declined card, 5% for a sold-out item,
    3% to an undeliverable address, and ``max(1, count // 64)`` bulk orders (large invoices) among the rest."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    rng = random.Random(seed)
    orders: list[dict[str, Any]] = []
    for i in range(1, count + 1):
        fate = rng.random()
        sku = rng.choice(SKUS)
        card, postcode = GOOD_CARD, f"{rng.randint(10000, 99999)}"
        if fate < 0.07:
            card = DECLINED_CARD
        elif fate < 0.12:
            sku = SOLD_OUT_SKU
        elif fate < 0.15:
            postcode = NOWHERE
        qty = rng.randint(1, 3)
        price = rng.choice((19.9, 29.0, 49.5, 89.0, 129.0, 249.0))
        orders.append({"order": f"ord-{i:05d}", "customer": f"cust-{rng.randint(1, count * 4):05d}",
                       "tier": "premium" if rng.random() < 0.25 else "standard",
                       "card": card, "postcode": postcode, "sku": sku, "qty": qty, "price": price,
                       "amount": round(qty * price, 2), "lines": qty})
    clean = [o for o in orders if expected_outcome(o) == "completed"]
    for order in rng.sample(clean, min(len(clean), max(1, count // 64))):
        order["lines"] = BULK_LINES
        order["amount"] = round(BULK_LINES * order["price"], 2)
    return orders


def expected_outcome(order: Mapping[str, Any]) -> str:
    """What the workflow must end as for ``order``: ``completed`` or ``compensated``."""
    if order["card"] == DECLINED_CARD or order["sku"] == SOLD_OUT_SKU or order["postcode"] == NOWHERE:
        return "compensated"
    return "completed"


def failure_reason(order: Mapping[str, Any]) -> str | None:
    if order["card"] == DECLINED_CARD:
        return "card declined"
    if order["sku"] == SOLD_OUT_SKU:
        return "out of stock"
    if order["postcode"] == NOWHERE:
        return "undeliverable"
    return None


def flaky_payment(order_id: str) -> bool:
    """The payment gateway times out on the first attempt for about one order in ten (retried by the workflow)."""
    return zlib.crc32(order_id.encode()) % 10 == 3


def invoice_lines(order: Mapping[str, Any]) -> Iterable[str]:
    yield f"INVOICE {order['order']}  customer {order['customer']}  postcode {order['postcode']}\n"
    unit = f"{order['sku']:<20} 1 x {order['price']:>8.2f}\n"
    for line in range(1, int(order["lines"]) + 1):
        yield f"{line:>7}  {unit}"
    yield f"TOTAL {order['amount']:.2f} EUR\n"


def render_invoice(order: Mapping[str, Any]) -> bytes:
    """The invoice document: a line per item (a bulk order's runs to a few MiB)."""
    return "".join(invoice_lines(order)).encode()


# -- the order lifecycle the convoy checks --------------------------------------------------------------------------
@dataclass
class Lifecycle:
    """One order's lifecycle events, checked as they arrive: they must come in the order they happened.

    ``accepted`` first; the steps' events in workflow order; a failure event; compensations undoing the
    completed steps latest first; then exactly one final event (``completed`` with every step done, or
    ``compensated`` with everything undone). Anything else is a violation (the convoy delivered out of order,
    or the workflow did something it must not).
    """

    order: str
    tier: str | None = None
    events: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # completed steps not undone, in completion order
    failed: str | None = None
    final: str | None = None
    violations: list[str] = field(default_factory=list)

    def apply(self, event: str) -> str | None:
        """Record ``event``; return the final status once the order ends (the event that ended it), else None."""
        self.events.append(event)
        problem = self._check(event)
        if problem:
            self.violations.append(f"{event}: {problem}")
        return self.final if event in ("completed", "compensated", "compensation_failed") else None

    def _check(self, event: str) -> str | None:
        if self.final is not None:
            return f"after the order ended {self.final}"
        if len(self.events) == 1:
            return None if event == "accepted" else "before 'accepted'"
        if event == "accepted":
            return "twice"
        if event in STEP_EVENTS:
            step = STEP_EVENTS[event]
            want = STEPS[len(self.done)][0] if len(self.done) < len(STEPS) else None
            if self.failed is not None:
                return f"after {self.failed} failed"
            self.done.append(step)
            return None if step == want else f"expected step {want}"
        if event in FAILURE_EVENTS:
            if self.failed is not None:
                return "second failure"
            self.failed = FAILURE_EVENTS[event]
            want = STEPS[len(self.done)][0] if len(self.done) < len(STEPS) else None
            return None if self.failed == want else f"{self.failed} failed while the next step was {want}"
        if event in COMPENSATION_EVENTS:
            step = COMPENSATION_EVENTS[event]
            if self.failed is None:
                return "compensation without a failure"
            if not self.done or self.done[-1] != step:
                return f"undoes {step}, but the latest completed step is {self.done[-1] if self.done else None}"
            self.done.pop()
            return None
        if event == "completed":
            self.final = event
            return None if self.failed is None and len(self.done) == len(STEPS) else "not every step done"
        if event in ("compensated", "compensation_failed"):
            self.final = event
            if self.failed is None:
                return "without a failure"
            # The shipping step has no compensation: a completed one would stay done (it never is: it is last).
            return None if not self.done else f"steps left done: {self.done}"
        return "unknown event"


# -- accounting -----------------------------------------------------------------------------------------------------
@dataclass
class Accounting:
    """Every placed order, what it ended as by each witness, and whether anything went wrong."""

    placed: int
    completed: int
    compensated: int
    lost: list[str]  # placed, never ended (no final notification)
    failed: list[str]  # ended compensation_failed
    unexpected: list[str]  # ended otherwise than the scenario says it must
    disagreeing: list[str]  # the notification and the workflow store say different things
    invalid: list[str]  # lifecycle events out of order (the convoy's check)
    unknown: list[str]  # final notifications for orders nobody placed

    @property
    def ok(self) -> bool:
        return not (self.lost or self.failed or self.unexpected or self.disagreeing or self.invalid or self.unknown)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def problems(self) -> list[str]:
        out = []
        for name in ("lost", "failed", "unexpected", "disagreeing", "invalid", "unknown"):
            ids = getattr(self, name)
            if ids:
                out.append(f"{len(ids)} {name} ({', '.join(sorted(ids)[:5])}{', ...' if len(ids) > 5 else ''})")
        return out


def account(placed: Iterable[str], finals: Mapping[str, str], *, expected: Mapping[str, str] | None = None,
            store: Mapping[str, str | None] | None = None, invalid: Iterable[str] = ()) -> Accounting:
    """Compare ids: every order in ``placed`` must have a final status in ``finals`` (the notifications) that is
    ``completed`` or ``compensated``, matches ``expected`` and the workflow ``store`` (when given)."""
    placed_ids = list(dict.fromkeys(placed))
    lost = [o for o in placed_ids if o not in finals]
    ended = {o: finals[o] for o in placed_ids if o in finals}
    failed = [o for o, s in ended.items() if s not in ("completed", "compensated")]
    unexpected = [o for o, s in ended.items() if expected is not None and expected.get(o) != s]
    disagreeing = [o for o, s in ended.items() if store is not None and store.get(o) != s]
    unknown = sorted(set(finals) - set(placed_ids))
    return Accounting(len(placed_ids), sum(s == "completed" for s in ended.values()),
                      sum(s == "compensated" for s in ended.values()), lost, failed, unexpected, disagreeing,
                      sorted(set(invalid)), unknown)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` by linear interpolation; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
