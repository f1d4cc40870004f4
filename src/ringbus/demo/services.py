"""The demo's services, each in a process of its own: ``python -m ringbus.demo.services ROLE --url URL --data DIR``.

==========  ===========================================================================================
gateway     the HTTP gateway (async request-reply: JobManager + Starlette app on uvicorn) and its checkout
            workers, which forward each order to ``shop.orders`` at its customer's level (PrioritySender)
orders      the order service: takes ``shop.orders`` premium first (PriorityConsumer), announces the order
            on its convoy and starts its workflow; runs the workflow engine (scheduler + supervisor) and
            announces each finished operation
agents      workflow agents (payment, warehouse, invoicing, carrier): run the steps and compensations,
            announce each on the order's convoy, send invoices (large ones by claim check)
tracker     the order tracker: a sequential convoy per order id checks the lifecycle and publishes the
            order's final state (pub-sub)
notifier    e-mails customers (durable subscriber group) and attaches their invoices (claim check consumer)
==========  ===========================================================================================

A service prints ``ready ROLE [detail]`` once it is attached, runs until its standard input closes (the parent
closes it to stop it; if the parent dies, it closes too), then prints ``stats {json}`` and exits. It ignores
SIGINT so the parent decides the order of shutdown. Logs go to standard error (the parent sends them to a file).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ringbus.bus import Bus, connect
from ringbus.demo.scenario import (
    CHECKOUT_QUEUE,
    DECLINED_CARD,
    ENGINE,
    EVENTS_QUEUE,
    FINAL_TOPIC,
    INVOICES_QUEUE,
    LEVELS,
    NOWHERE,
    ORDERS_QUEUE,
    READY_PREFIX,
    SOLD_OUT_SKU,
    STATS_PREFIX,
    STEPS,
    TOKEN_ENV,
    WORKFLOW,
    Lifecycle,
    flaky_payment,
    render_invoice,
)
from ringbus.message import Message
from ringbus.patterns import RetryPolicy

__all__ = ["ROLES", "main", "build_workflow", "shop_actions", "TOKEN_ENV"]

log = logging.getLogger("ringbus.demo")

INTAKE_COST = 0.008  # seconds of the order service's credit check per order: where a backlog (and priority) shows
CLAIM_THRESHOLD = 256 * 1024


class Buses:
    """One bus per thread (a Bus belongs to the thread that opened it), all closed at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[Bus] = []

    def get(self) -> Bus:
        bus = getattr(self._local, "bus", None)
        if bus is None or bus.closed:
            bus = self._local.bus = connect(self.url)
            with self._lock:
                self._all.append(bus)
        return bus

    def close(self) -> None:
        with self._lock:
            buses, self._all = self._all, []
        for bus in buses:
            try:
                bus.close()
            except Exception:  # noqa: BLE001 - closing at exit; nothing more to do
                log.debug("closing a bus failed", exc_info=True)


class Counts:
    """A Counter under a lock (actions run on several threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counter: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counter[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counter)


def send_event(bus: Bus, order: str, event: str, dedup: str, **data: Any) -> None:
    """Put a lifecycle event on the order's convoy (key = order id); ``dedup`` makes a repeated send a no-op."""
    body = json.dumps({"order": order, "event": event, "at": time.time(), **data}).encode()
    bus.send(EVENTS_QUEUE, body, key=order, headers={"event": event}, dedup_id=f"event:{order}:{dedup}")


# -- the workflow --------------------------------------------------------------------------------------------------

def build_workflow() -> Any:
    """payment -> inventory -> invoice -> shipping, each undone by its compensation when a later one fails."""
    from ringbus.patterns.scheduler_agent_supervisor import Retry, Step, Workflow

    retry = Retry(max_attempts=3, backoff=RetryPolicy(base=0.05, factor=2.0, jitter=False))
    steps = [Step(step, action=action, compensation=undo, timeout=20.0, retry=retry)
             for step, action, _, undo, _ in STEPS]
    return Workflow(WORKFLOW, steps)


def shop_actions(buses: Buses, claims: Any, counts: Counts) -> dict[str, Callable[[Any], Any]]:
    """The agents' registry: the payment provider, the warehouse, invoicing and the carrier."""
    from ringbus.patterns.scheduler_agent_supervisor import PermanentError

    class GatewayTimeout(Exception):
        """The payment gateway did not answer: worth another attempt."""

    class CardDeclined(PermanentError):
        pass

    class OutOfStock(PermanentError):
        pass

    class Undeliverable(PermanentError):
        pass

    def event(task: Any, name: str, **data: Any) -> None:
        # Sent before the action returns: the agent reports the result after it, so the next step's events
        # (and the compensations) are sent after this one. Every attempt of a step makes one event (step_key).
        send_event(buses.get(), task.operation_id, name, f"{task.step_key}:{name}", **data)
        counts.add(name)

    def refuse(task: Any, name: str, error: Exception) -> None:
        """Fail the step for good, announcing it first (the compensations come after)."""
        event(task, name)
        raise error

    def charge_card(task: Any) -> dict[str, Any]:
        order = task.original
        if flaky_payment(order["order"]) and task.attempt == 1:
            counts.add("gateway_timeouts")
            raise GatewayTimeout("the payment gateway did not answer within 2 s")
        if order["card"] == DECLINED_CARD:
            refuse(task, "payment_declined", CardDeclined(f"card {order['card']} declined"))
        event(task, "paid", amount=order["amount"])
        return {"payment": f"pay-{order['order']}", "amount": order["amount"]}

    def reserve_stock(task: Any) -> dict[str, Any]:
        order = task.original
        if order["sku"] == SOLD_OUT_SKU:
            refuse(task, "out_of_stock", OutOfStock(f"{order['sku']} is sold out"))
        event(task, "reserved")
        return {"reservation": f"res-{order['order']}"}

    def issue_invoice(task: Any) -> dict[str, Any]:
        order = task.original
        document = render_invoice(order)
        claims.send(buses.get(), INVOICES_QUEUE, document, key=order["order"], content_type="text/plain",
                    headers={"order": order["order"], "customer": order["customer"]},
                    dedup_id=f"invoice:{task.step_key}")
        counts.add("invoice_bytes", len(document))
        event(task, "invoiced", bytes=len(document))
        return {"invoice": f"INV-{order['order']}", "bytes": len(document),
                "claimed": len(document) > CLAIM_THRESHOLD}

    def ship(task: Any) -> dict[str, Any]:
        order = task.original
        if order["postcode"] == NOWHERE:
            refuse(task, "undeliverable", Undeliverable(f"the carrier does not serve postcode {order['postcode']}"))
        event(task, "shipped")
        return {"tracking": f"TRK{order['order'][4:]}"}

    def undo(name: str) -> Callable[[Any], None]:
        def compensation(task: Any) -> None:
            event(task, name)
        compensation.__name__ = name
        return compensation

    return {"charge_card": charge_card, "reserve_stock": reserve_stock, "issue_invoice": issue_invoice,
            "ship": ship, "refund_payment": undo("refunded"), "release_stock": undo("released"),
            "void_invoice": undo("invoice_voided")}


# -- the services --------------------------------------------------------------------------------------------------

class Service:
    """What a role builds: ``stop()`` and ``stats()``; ``detail`` goes on the ready line."""

    detail = ""

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


class Gateway(Service):
    def __init__(self, args: argparse.Namespace) -> None:
        from ringbus.http import JobServer, create_app
        from ringbus.patterns.async_request_reply import JobManager, JobWorker
        from ringbus.patterns.priority import PrioritySender

        self.counts = Counts()
        self.buses = Buses(args.url)
        senders = threading.local()
        lose = args.lose

        def checkout(job: Any, progress: Callable[..., None]) -> dict[str, Any]:
            order = job.input
            if not isinstance(order, dict) or not isinstance(order.get("order"), str) or \
                    order.get("tier") not in LEVELS:
                raise ValueError(f"not an order: {order!r}")
            if order["order"] == lose:  # --lose-one-for-test: a bug that drops an order the gateway accepted
                self.counts.add("dropped")
                return {"order": order["order"], "accepted": True, "tier": order["tier"]}
            sender = getattr(senders, "sender", None)
            if sender is None or sender.bus.closed:
                # Standard orders that wait 5 s are raised above premium ones (aging): none starves.
                sender = senders.sender = PrioritySender(self.buses.get(), ORDERS_QUEUE, levels=LEVELS,
                                                         max_wait={"standard": 5.0})
            sender.send(json.dumps(order).encode(), order["tier"], key=order["order"],
                        headers={"order": order["order"]}, dedup_id=f"order:{order['order']}")
            self.counts.add(f"forwarded_{order['tier']}")
            return {"order": order["order"], "accepted": True, "tier": order["tier"]}

        data = Path(args.data)
        self.manager = JobManager(args.url, queue=CHECKOUT_QUEUE, store=data / "jobs.sqlite3").start()
        try:
            self.workers = JobWorker(args.url, checkout, queue=CHECKOUT_QUEUE, threads=4, retries=2,
                                     retry=RetryPolicy(base=0.05)).start()
            self.server = JobServer(create_app(self.manager, token=os.environ.get(TOKEN_ENV) or None,
                                               retry_after=1)).start()
        except BaseException:
            self.manager.close()
            raise
        self.detail = self.server.url

    def stop(self) -> None:
        self.server.stop()
        self.workers.stop()
        self.manager.close()
        self.buses.close()

    def stats(self) -> dict[str, Any]:
        manager, workers = self.manager.stats(), self.workers.stats()
        return {"jobs": manager.jobs, "submitted": manager.submitted, "checkouts_run": workers.processed,
                "checkouts_failed": workers.failed, **self.counts.snapshot()}


class Orders(Service):
    def __init__(self, args: argparse.Namespace) -> None:
        from ringbus.patterns.priority import PriorityConsumer, declare_priority_queue
        from ringbus.patterns.scheduler_agent_supervisor import WorkflowEngine, submit

        self.counts = Counts()
        self.buses = Buses(args.url)
        with connect(args.url) as bus:
            declare_priority_queue(bus, ORDERS_QUEUE, max_attempts=5)

        def intake(message: Message) -> None:
            order = json.loads(bytes(message.body))
            time.sleep(INTAKE_COST)  # the credit check
            bus = self.buses.get()
            send_event(bus, order["order"], "accepted", "accepted", tier=order["tier"])
            submit(bus, WORKFLOW, order, name=ENGINE, operation_id=order["order"])
            self.counts.add(f"intake_{order['tier']}")

        self.engine = WorkflowEngine(args.url, build_workflow(), name=ENGINE,
                                     store=Path(args.data) / "workflows.sqlite3", check_interval=0.5,
                                     schedulers=2).start()
        try:
            self.consumer = PriorityConsumer(args.url, ORDERS_QUEUE, intake, levels=LEVELS, prefetch=1,
                                             retry=RetryPolicy(base=0.05)).start()
        except BaseException:
            self.engine.stop()
            raise
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="demo-final-watcher", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Announce each operation that finished on its order's convoy (the tracker publishes it)."""
        announced: set[str] = set()
        store = self.engine.store
        with connect(self.engine.url) as bus:
            while not self._stop.wait(0.1):
                for status in ("completed", "compensated", "compensation_failed"):
                    for op_id in store.ids(status):
                        if op_id in announced:
                            continue
                        op = store.load(op_id)
                        error = (op.error or {}).get("Error") if op is not None else None
                        try:
                            send_event(bus, op_id, status, "final", error=error)
                        except Exception as exc:  # noqa: BLE001 - tried again at the next look
                            log.warning("final event of %s not sent (%s); trying again", op_id, exc)
                            continue
                        announced.add(op_id)
                        self.counts.add(f"final_{status}")

    def stop(self) -> None:
        self._stop.set()
        self._watcher.join(5.0)
        self.consumer.stop()
        self.engine.stop()
        self.buses.close()

    def stats(self) -> dict[str, Any]:
        consumer, engine = self.consumer.stats(), self.engine.stats()
        return {"by_level": consumer.by_level, "aged": consumer.aged, "intake_failed": consumer.failed,
                "steps_succeeded": engine.processed, "attempts_failed": engine.failed, "retried": engine.retried,
                "compensations": engine.compensations, "timeouts": engine.timeouts, "lost_tasks": engine.lost,
                "operations_completed": engine.operations_completed,
                "operations_compensated": engine.operations_compensated,
                "operations_compensation_failed": engine.operations_compensation_failed,
                **self.counts.snapshot()}


class Agents(Service):
    def __init__(self, args: argparse.Namespace) -> None:
        from ringbus.patterns.claim_check import ClaimCheck, LocalStore
        from ringbus.patterns.scheduler_agent_supervisor import Agent

        self.counts = Counts()
        self.buses = Buses(args.url)
        self.claims = ClaimCheck(LocalStore(Path(args.data) / "claims"), threshold=CLAIM_THRESHOLD)
        actions = shop_actions(self.buses, self.claims, self.counts)
        self.agents = []
        try:
            for i in range(args.threads):
                self.agents.append(Agent(args.url, actions, name=ENGINE, agent_id=f"{args.name}-{i}").start())
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for agent in self.agents:
            agent._stop.set()  # all wind down at once
        for agent in self.agents:
            agent.stop()
        self.buses.close()

    def stats(self) -> dict[str, Any]:
        tasks = sum(a.stats().processed for a in self.agents)
        failed = sum(a.stats().failed for a in self.agents)
        claims = self.claims.stats()
        return {"tasks_succeeded": tasks, "tasks_failed": failed, "invoices_inline": claims.inline,
                "invoices_claimed": claims.claimed, "bytes_claimed": claims.bytes_stored, **self.counts.snapshot()}


class Tracker(Service):
    def __init__(self, args: argparse.Namespace) -> None:
        from ringbus.patterns.convoy import SequentialConvoy
        from ringbus.patterns.pubsub import Publisher

        self.counts = Counts()
        self.buses = Buses(args.url)
        self.lock = threading.Lock()
        self.orders: dict[str, Lifecycle] = {}
        self.seen: set[str] = set()
        publishers = threading.local()

        def track(message: Message) -> None:
            event = json.loads(bytes(message.body))
            order = event["order"]
            with self.lock:  # the convoy hands out one event per order at a time; the dict is shared
                life = self.orders.setdefault(order, Lifecycle(order))
                first_time = message.id not in self.seen
                self.seen.add(message.id)
            if first_time:
                life.apply(event["event"])
                if event["event"] == "accepted":
                    life.tier = event.get("tier")
                self.counts.add("events")
            if event["event"] in ("completed", "compensated", "compensation_failed"):
                publisher = getattr(publishers, "publisher", None)
                if publisher is None or publisher.bus.closed:
                    publisher = publishers.publisher = Publisher(self.buses.get(), serializer="json",
                                                                 name="tracker")
                publisher.publish(f"{FINAL_TOPIC}.{event['event'].replace('_', '-')}", {
                    "order": order, "status": event["event"], "tier": life.tier,
                    "error": event.get("error"), "events": life.events, "valid": not life.violations,
                    "violations": life.violations}, key=order)
                if first_time:
                    self.counts.add("published")
                    if life.violations:
                        self.counts.add("invalid")

        self.convoy = SequentialConvoy(args.url, EVENTS_QUEUE, track, workers=4,
                                       retry=RetryPolicy(base=0.05, max_delay=1.0)).start()

    def stop(self) -> None:
        self.convoy.stop()
        self.buses.close()

    def stats(self) -> dict[str, Any]:
        convoy = self.convoy.stats()
        with self.lock:
            in_order = sum(1 for life in self.orders.values() if life.final and not life.violations)
        return {"events_handled": convoy.processed, "handler_failures": convoy.failed,
                "dead_lettered": convoy.dead_lettered, "orders_in_order": in_order, **self.counts.snapshot()}


class Notifier(Service):
    def __init__(self, args: argparse.Namespace) -> None:
        from ringbus.patterns.claim_check import ClaimCheck, LocalStore
        from ringbus.patterns.pubsub import Subscriber

        self.counts = Counts()
        self.claims = ClaimCheck(LocalStore(Path(args.data) / "claims"), threshold=CLAIM_THRESHOLD)

        def email(message: Message) -> None:
            note = message.value()
            self.counts.add(f"emails_{note['status']}")

        def attach(message: Message, stream: Any) -> None:
            size = 0
            while chunk := stream.read(1 << 20):  # the claim check verifies size and SHA-256 as it is read
                size += len(chunk)
            self.counts.add("invoices")
            self.counts.add("invoice_bytes", size)

        self._stop = threading.Event()
        self._ready = threading.Event()
        self._errors: list[BaseException] = []

        def invoices() -> None:
            try:
                with connect(args.url) as bus:
                    bus.declare_queue(INVOICES_QUEUE, durable=True, max_attempts=5)
                    self._ready.set()
                    self.claims.consume(bus, INVOICES_QUEUE, attach, prefetch=4, stop=self._stop)
            except BaseException as exc:  # noqa: BLE001 - reported by start (or in the stats)
                self._errors.append(exc)
                log.exception("invoice consumer stopped")
                self._ready.set()

        self._thread = threading.Thread(target=invoices, name="demo-invoices", daemon=True)
        self._thread.start()
        if not self._ready.wait(30.0) or self._errors:
            self._stop.set()
            raise RuntimeError(f"the invoice consumer did not start: {self._errors[:1]}")
        self.subscriber = Subscriber(args.url, f"{FINAL_TOPIC}.*", email, group="email", durable=True).start()

    def stop(self) -> None:
        self.subscriber.stop()
        self._stop.set()
        self._thread.join(10.0)

    def stats(self) -> dict[str, Any]:
        claims = self.claims.stats()
        return {"emails": self.subscriber.stats().processed, "invoices_fetched_from_store": claims.fetched,
                "bytes_fetched_from_store": claims.bytes_fetched, "claim_errors": claims.dead_lettered,
                "consumer_errors": len(self._errors), **self.counts.snapshot()}


ROLES: dict[str, Callable[[argparse.Namespace], Service]] = {
    "gateway": Gateway, "orders": Orders, "agents": Agents, "tracker": Tracker, "notifier": Notifier}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ringbus.demo.services", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--url", required=True, help="the broker")
    parser.add_argument("--data", required=True, help="the demo's data directory (stores, claims)")
    parser.add_argument("--name", default=None, help="this process's name (agents)")
    parser.add_argument("--threads", type=int, default=3, help="agent threads (agents)")
    parser.add_argument("--lose", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.name = args.name or args.role
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (closing stdin) in its own order
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(name)s %(levelname)s %(message)s")
    service = ROLES[args.role](args)
    try:
        print(f"{READY_PREFIX}{args.name} {service.detail}".rstrip(), flush=True)
        sys.stdin.read()  # until the parent closes it (or dies)
        stats = service.stats()  # the parent stops us once everything settled: these are the final counts
    finally:
        service.stop()
    print(STATS_PREFIX + json.dumps(stats, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
