"""``ringbus demo``: the seed's e-commerce scenario across processes on an embedded broker, with most patterns at once.

What runs where (docs/demo.md has the picture): a broker process; five kinds of service process
(:mod:`ringbus.demo.services`: gateway, orders, two agents, tracker, notifier); and this process, the customers
(HTTP clients placing orders with :class:`ringbus.http.JobClient`) and a dashboard (a durable subscriber group
that records when each order ended). At the end the ids are counted: every order placed must have ended
``completed`` or ``compensated`` - as the scenario says it must, as the workflow store says it did, with its
lifecycle events in order - or the demo exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ringbus.demo.display import Display, Progress, make_display
from ringbus.demo.scenario import (
    ENGINE,
    FINAL_TOPIC,
    JOB_PRIORITY,
    ORDERS_QUEUE,
    READY_PREFIX,
    STATS_PREFIX,
    TOKEN_ENV,
    account,
    expected_outcome,
    failure_reason,
    make_orders,
    percentile,
)
from ringbus.errors import RingbusError

__all__ = ["main", "build_parser"]

SUMMARY_PREFIX = "demo:"  # the last line: "demo: OK ..." or "demo: FAILED ..."
CUSTOMERS = 8  # HTTP clients placing orders at once


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringbus demo",
        description="Run the e-commerce scenario across processes on an embedded broker: orders through the HTTP "
                    "gateway, premium first, a convoy per order, the payment/inventory/invoice/shipping workflow "
                    "with compensation, notifications by pub-sub, large invoices by claim check; then a summary.")
    parser.add_argument("--orders", type=int, default=200, help="orders to place (default: 200)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the orders (which fail, which are premium)")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs, stores, broker log)")
    parser.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    parser.add_argument("--plain", action="store_true", help="plain text even when rich is installed")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the orders to finish before counting the rest lost (default: 120)")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="seconds without any broker traffic after which unfinished orders count as lost")
    parser.add_argument("--agents", type=int, default=2, help="agent processes (3 threads each; default: 2)")
    parser.add_argument("--lose-one-for-test", action="store_true", help=argparse.SUPPRESS)
    return parser


# -- child processes ---------------------------------------------------------------------------------------------

@dataclass
class Child:
    name: str
    process: subprocess.Popen[str]
    log: IO[str]
    detail: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


def spawn(role: str, name: str, url: str, data: Path, env: dict[str, str], *extra: str) -> Child:
    log = open(data / "logs" / f"{name}.log", "w")  # noqa: SIM115 - closed in stop_children
    command = [sys.executable, "-m", "ringbus.demo.services", role, "--url", url, "--data", str(data),
               "--name", name, *extra]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                               env=env)
    return Child(name, process, log)


def wait_ready(children: list[Child], timeout: float) -> None:
    """Return once every child printed its ready line; RuntimeError naming the first that died or was late."""
    deadline = time.monotonic() + timeout
    waiting: dict[int, tuple[Child, IO[str]]] = {}
    for child in children:
        assert child.process.stdout is not None
        waiting[child.process.stdout.fileno()] = (child, child.process.stdout)
    with selectors.DefaultSelector() as selector:
        for fd in waiting:
            selector.register(fd, selectors.EVENT_READ)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"service(s) {', '.join(c.name for c, _ in waiting.values())} not ready "
                                   f"within {timeout:g} s")
            for key, _ in selector.select(timeout=min(left, 1.0)):
                child, stream = waiting.pop(key.fd)
                selector.unregister(key.fd)
                line = stream.readline()
                if not line.startswith(READY_PREFIX):
                    code = child.process.wait(5.0)
                    raise RuntimeError(f"service {child.name} failed to start (exit {code}); the end of its log "
                                       "is above")
                child.detail = line[len(READY_PREFIX):].strip().partition(" ")[2]


def stop_children(children: list[Child], timeout: float = 20.0) -> None:
    """Close each child's stdin (it stops, printing its stats), wait for it; kill one that does not end in time."""
    for child in children:
        if child.process.stdin is not None:
            try:
                child.process.stdin.close()
            except OSError:
                pass
            child.process.stdin = None  # communicate() below must not flush it
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            out, _ = child.process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            out, _ = child.process.communicate()
        for line in (out or "").splitlines():
            if line.startswith(STATS_PREFIX):
                child.stats = json.loads(line[len(STATS_PREFIX):])
        child.log.close()


def kill_children(children: list[Child]) -> None:
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
        for stream in (child.process.stdin, child.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        if not child.log.closed:
            child.log.close()


# -- this process: customers and the dashboard -------------------------------------------------------------------

class Dashboard:
    """A durable subscriber group on ``order.*``: when each order's final notification arrived, and what it said."""

    def __init__(self, url: str) -> None:
        from ringbus.patterns.pubsub import Subscriber

        self.lock = threading.Lock()
        self.finals: dict[str, tuple[str, float, dict[str, Any]]] = {}
        self.duplicates = 0
        self.subscriber = Subscriber(url, f"{FINAL_TOPIC}.*", self._on_final, group="dashboard", durable=True)

    def _on_final(self, message: Any) -> None:
        note = message.value()
        now = time.monotonic()
        with self.lock:
            if note["order"] in self.finals:
                self.duplicates += 1  # at-least-once: a repeat changes nothing
            else:
                self.finals[note["order"]] = (note["status"], now, note)

    def counts(self) -> tuple[int, int]:
        with self.lock:
            statuses = Counter(status for status, _, _ in self.finals.values())
        return statuses["completed"], statuses["compensated"]


class Customers:
    """Place every order through the HTTP gateway (POST /jobs -> 202), then collect each checkout's receipt (poll
    the job, honouring Retry-After, follow the 303 to its result)."""

    def __init__(self, gateway: str, token: str, orders: list[dict[str, Any]]) -> None:
        from ringbus.http import JobClient

        self.client = JobClient(gateway, token=token)
        self.orders = orders
        self.lock = threading.Lock()
        self.placed: dict[str, float] = {}  # order id -> when its POST was made (monotonic)
        self.jobs: dict[str, str] = {}  # order id -> job id
        self.refused: dict[str, str] = {}
        self.receipts: Counter[str] = Counter()
        self.polls = 0
        self.done = threading.Event()
        self._closing = threading.Event()
        self._pool = ThreadPoolExecutor(CUSTOMERS, thread_name_prefix="demo-customer")
        self._thread = threading.Thread(target=self._run, name="demo-customers", daemon=True)

    def start(self) -> Customers:
        self._thread.start()
        return self

    def _place(self, order: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            submission = self.client.submit(order, priority=JOB_PRIORITY[order["tier"]])
        except Exception as exc:  # noqa: BLE001 - a refused order is reported, not raised
            with self.lock:
                self.refused[order["order"]] = f"{type(exc).__name__}: {exc}"
            return
        with self.lock:
            self.placed[order["order"]] = started
            self.jobs[order["order"]] = submission.id

    def _receipt(self, job_id: str) -> None:
        try:
            outcome = self.client.wait(job_id, timeout=60.0)
            status, polls = outcome.status, outcome.polls
        except Exception as exc:  # noqa: BLE001 - counted
            status, polls = type(exc).__name__, 0
        with self.lock:
            self.receipts[status] += 1
            self.polls += polls

    def _run(self) -> None:
        try:
            list(self._pool.map(self._place, self.orders))
            with self.lock:
                jobs = list(self.jobs.values())
            list(self._pool.map(self._receipt, jobs))
        except Exception:  # noqa: BLE001
            if not self._closing.is_set():
                raise
            # the pool was shut down under us (cancelled futures): the demo is stopping
        finally:
            self.done.set()

    def close(self) -> None:
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._thread.join(5.0)
        self.client.close()


def broker_totals(stats: dict[str, Any]) -> dict[str, int]:
    queues = stats["queues"].values()
    return {"queue_sends": sum(q["sent"] for q in queues), "acked": sum(q["acked"] for q in queues),
            "to_groups": sum(q["sent"] for name, q in stats["queues"].items() if name.startswith("@")),
            "published": stats["topics"]["published"],
            "requests": stats["services"]["requests"],
            # Arrivals in dead-letter queues (a priority queue's aging moves are dead letters to it, not these).
            "dead_lettered": sum(q["sent"] for name, q in stats["queues"].items() if name.endswith(".dlq"))}


def messages(totals: dict[str, int]) -> int:
    """Messages the broker handled: queue messages (a durable group's copy of a publication among them),
    publications, and service requests (their replies not counted)."""
    return totals["queue_sends"] + totals["published"] + totals["requests"]


def depth(stats: dict[str, Any], queue: str) -> int:
    q = stats["queues"].get(queue)
    return 0 if q is None else int(q["depth"] + q["in_flight"])


def unsettled(stats: dict[str, Any]) -> list[str]:
    """Queues (dead-letter queues aside) with messages waiting or in flight."""
    return [name for name, q in stats["queues"].items()
            if not name.endswith(".dlq") and (q["depth"] or q["in_flight"])]


# -- the run -----------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, display: Display) -> int:
    from ringbus.backends.broker import BrokerBus
    from ringbus.broker.process import BrokerProcess

    began = time.monotonic()
    data = Path(tempfile.mkdtemp(prefix="ringbus-demo-"))
    (data / "logs").mkdir()
    children: list[Child] = []
    broker = dashboard = customers = bus = None
    clean = False
    try:
        orders = make_orders(args.orders, args.seed)
        expected = {o["order"]: expected_outcome(o) for o in orders}
        tiers = {o["order"]: o["tier"] for o in orders}
        lose = orders[len(orders) // 2]["order"] if args.lose_one_for_test else None

        broker = BrokerProcess(data / "broker", "tcp://127.0.0.1:0", extra=["--log-level", "warning"]).start()
        url = broker.endpoint
        display.note(f"ringbus demo: {args.orders} orders (seed {args.seed}); broker {url} (process "
                     f"{broker.pid}); data {data}")
        dashboard = Dashboard(url)
        dashboard.subscriber.start()  # its durable group exists before the first notification

        token = secrets.token_urlsafe(16)
        env = {**os.environ, TOKEN_ENV: token}
        plan = [("tracker", "tracker"), ("notifier", "notifier"), ("orders", "orders")]
        plan += [("agents", f"agents-{i + 1}") for i in range(args.agents)]
        children = [spawn(role, name, url, data, env) for role, name in plan]
        children.append(spawn("gateway", "gateway", url, data, env, *(["--lose", lose] if lose else [])))
        wait_ready(children, timeout=60.0)
        gateway = next(c for c in children if c.name == "gateway").detail
        display.note(f"services up after {time.monotonic() - began:.1f} s: "
                     + ", ".join(f"{c.name} (pid {c.process.pid})" for c in children) + f"; HTTP gateway {gateway}")

        bus = BrokerBus(url)  # what connect() makes of the broker's tcp:// endpoint
        customers = Customers(gateway, token, orders).start()
        started = time.monotonic()
        deadline = started + args.timeout
        last_total, last_change, stalled = -1, time.monotonic(), False
        while True:
            stats = bus.broker_stats()
            total = messages(broker_totals(stats))
            now = time.monotonic()
            if total != last_total:
                last_total, last_change = total, now
            completed, compensated = dashboard.counts()
            with customers.lock:
                placed = len(customers.placed)
                receipts = sum(customers.receipts.values())
            display.update(Progress(now - started, len(orders), placed, receipts, completed, compensated,
                                    depth(stats, ORDERS_QUEUE), depth(stats, f"{ENGINE}.tasks"), total))
            placing_done = customers.done.is_set() or placed + len(customers.refused) == len(orders)
            if customers.done.is_set() and completed + compensated >= placed:
                break
            if now > deadline or (placing_done and now - last_change > args.idle):
                stalled = True
                break
            time.sleep(0.2)
        finished_at = min(time.monotonic(), last_change) if stalled else time.monotonic()
        # Let the rest settle: e-mails, invoices, acks (the orders are done; this is the tail of the traffic).
        settle_until = time.monotonic() + (2.0 if stalled else 15.0)
        while unsettled(stats := bus.broker_stats()) and time.monotonic() < settle_until:
            time.sleep(0.1)
        leftover = unsettled(stats)
        display.update(Progress(time.monotonic() - started, len(orders), len(customers.placed),
                                sum(customers.receipts.values()), *dashboard.counts(), depth(stats, ORDERS_QUEUE),
                                depth(stats, f"{ENGINE}.tasks"), messages(broker_totals(stats))), force=True)
        totals = broker_totals(stats)
        (data / "broker-stats.json").write_text(json.dumps(stats, indent=1, default=str))
        customers.close()
        stop_children(children)
        dashboard.subscriber.stop()
        by_name = {c.name: c.stats for c in children}

        # The workflow store, read directly: each placed order's operation status.
        from ringbus.patterns.scheduler_agent_supervisor import SQLiteStateStore

        store_statuses: dict[str, str | None] = {}
        with SQLiteStateStore(data / "workflows.sqlite3") as store:
            for order_id in customers.placed:
                op = store.load(order_id)
                store_statuses[order_id] = None if op is None else op.status

        finals = {order: status for order, (status, _, _) in dashboard.finals.items()}
        invalid = [order for order, (_, _, note) in dashboard.finals.items() if not note.get("valid", False)]
        book = account(customers.placed, finals, expected=expected, store=store_statuses, invalid=invalid)
        if customers.refused:
            book.lost.extend(sorted(customers.refused))  # accepted by nobody: the customer was turned away

        rows = summary_rows(args, orders, expected, tiers, customers, dashboard, by_name, totals, book, started,
                            finished_at, time.monotonic() - began, leftover)
        display.summary(f"ringbus demo: {len(orders)} orders, seed {args.seed}", rows)
        wall = time.monotonic() - began
        verdict = "OK" if book.ok and not customers.refused else "FAILED"
        line = (f"{SUMMARY_PREFIX} {verdict} {book.placed} orders placed: {book.completed} completed, "
                f"{book.compensated} compensated, {len(book.lost)} lost in {wall:.1f} s")
        problems = book.problems()
        if problems:
            line += "; " + "; ".join(problems)
        display.close()
        print(line, flush=True)
        if args.keep:
            print(f"{SUMMARY_PREFIX} data kept in {data} (logs in {data / 'logs'})", flush=True)
        clean = book.ok
        return book.exit_code
    finally:
        if customers is not None:
            customers.close()
        kill_children(children)
        if not clean:
            show_logs(data / "logs")
        if dashboard is not None:
            dashboard.subscriber.stop(2.0)
        if bus is not None:
            bus.close()
        if broker is not None:
            broker.stop()
        display.close()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


def show_logs(logs: Path, lines: int = 8) -> None:
    """The last lines of each service's log that has any (warnings and errors only), on standard error."""
    for path in sorted(logs.glob("*.log")):
        try:
            text = path.read_text(errors="replace").strip()
        except OSError:
            continue
        if text:
            tail = text.splitlines()[-lines:]
            print(f"--- {path.stem} (last {len(tail)} log lines)\n" + "\n".join(tail), file=sys.stderr)


REASON_WORDS = {"card declined": "card", "out of stock": "stock", "undeliverable": "address"}


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:,.0f} ms"


def summary_rows(args: argparse.Namespace, orders: list[dict[str, Any]], expected: dict[str, str],
                 tiers: dict[str, str], customers: Customers, dashboard: Dashboard, stats: dict[str, dict[str, Any]],
                 totals: dict[str, int], book: Any, started: float, finished_at: float, wall: float,
                 leftover: list[str]) -> list[tuple[str, str, str]]:
    latency: dict[str, list[float]] = {"premium": [], "standard": []}
    ends = []
    for order, (_status, at, _) in dashboard.finals.items():
        if order in customers.placed:
            latency[tiers[order]].append(at - customers.placed[order])
            ends.append(at)
    every = latency["premium"] + latency["standard"]
    span = (max(ends) - min(customers.placed.values())) if ends and customers.placed else float("nan")
    reasons = Counter(str(failure_reason(o)) for o in orders if expected_outcome(o) == "compensated")
    gateway, orders_svc, tracker, notifier = (stats.get(n, {}) for n in ("gateway", "orders", "tracker", "notifier"))
    agents = [s for n, s in stats.items() if n.startswith("agents")]

    def agents_sum(key: str) -> int:
        return sum(int(a.get(key, 0)) for a in agents)

    jobs = gateway.get("jobs", {})
    ended = book.placed - len(book.lost)
    by_level = orders_svc.get("by_level", {})
    rows = [
        ("orders", "placed (HTTP 202)", f"{book.placed} of {len(orders)}"),
        ("orders", "completed", f"{book.completed}"),
        ("orders", "compensated", f"{book.compensated}"),
        ("orders", "  why", ", ".join(f"{REASON_WORDS.get(r, r)} {n}" for r, n in sorted(reasons.items()))
         or "-"),
        ("orders", "lost", f"{len(book.lost)}"),
        ("orders", "as scenario / as store", f"{ended - len(book.unexpected)} / {ended - len(book.disagreeing)} of "
                                             f"{ended}"),
        ("latency", "p50 / p95 / p99", " / ".join(_ms(percentile(every, q)) for q in (50, 95, 99))),
        ("latency", "p50 premium / standard", f"{_ms(percentile(latency['premium'], 50))} / "
                                              f"{_ms(percentile(latency['standard'], 50))}"),
        ("throughput", "orders finished / s", f"{len(ends) / span:,.1f}" if span == span and span > 0 else "-"),
        ("throughput", "broker messages / s", f"{messages(totals) / max(1e-9, finished_at - started):,.0f}"),
        ("broker", "messages", f"{messages(totals):,}"),
        ("broker", "queue msgs (group copies)", f"{totals['queue_sends']:,} ({totals['to_groups']:,})"),
        ("broker", "pubs / requests / dead", f"{totals['published']:,} / {totals['requests']:,} / "
                                             f"{totals['dead_lettered']:,}"),
        ("async request-reply", "jobs / receipts (polls)", f"{jobs.get('succeeded', 0)} / "
         f"{customers.receipts.get('succeeded', 0)} ({customers.polls})"),
        ("priority queue", "premium / standard (aged)", f"{by_level.get('premium', 0)} / "
                                                        f"{by_level.get('standard', 0)} ({orders_svc.get('aged', 0)})"),
        ("workflow", "steps / retries / undos", f"{orders_svc.get('steps_succeeded', 0)} / "
         f"{orders_svc.get('retried', 0)} / {orders_svc.get('compensations', 0)}"),
        ("workflow", "tasks per agent process", " / ".join(f"{a.get('tasks_succeeded', 0)}"
                                                                              for a in agents)),
        ("sequential convoy", "events / orders in order", f"{tracker.get('events_handled', 0)} / "
                                                          f"{tracker.get('orders_in_order', 0)}"),
        ("publish-subscribe", "dashboard / e-mails", f"{len(dashboard.finals)} / {notifier.get('emails', 0)}"),
        ("claim check", "invoices inline / claimed", f"{agents_sum('invoices_inline')} / "
                                                     f"{agents_sum('invoices_claimed')}"),
        ("claim check", "claimed MiB / verified", f"{agents_sum('bytes_claimed') / 2**20:.1f} / "
                                                  f"{notifier.get('invoices_fetched_from_store', 0)}"),
        ("run", "wall time", f"{wall:.1f} s"),
    ]
    if leftover:
        rows.append(("run", "queues not drained", ", ".join(leftover)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``ringbus demo [--orders N] [--seed S] [--keep] [--quiet]``; 0 when every order ended completed or
    compensated, 1 when one was lost (or ended otherwise than the scenario says), 2 on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.orders < 1 or args.agents < 1 or args.timeout <= 0 or args.idle <= 0:
        parser.error("--orders and --agents must be >= 1, --timeout and --idle > 0")
    try:
        import httpx  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        print(f"ringbus demo needs the HTTP gateway's packages ({exc.name} is missing): "
              "pip install 'ringbus[http]'", file=sys.stderr)
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        def interrupted(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt  # clean up as after Ctrl-C: children, broker, data directory

        previous = signal.signal(signal.SIGTERM, interrupted)
    with make_display(quiet=args.quiet, plain=args.plain) as display:
        try:
            return run(args, display)
        except KeyboardInterrupt:
            display.close()
            print(f"{SUMMARY_PREFIX} interrupted; cleaned up", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - a service that did not start, a broker that went away
            display.close()
            if not isinstance(exc, (RuntimeError, RingbusError, OSError)):
                traceback.print_exc()  # a bug: the whole story
            print(f"{SUMMARY_PREFIX} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
