"""``ringbus demo``: the whole scenario across processes ends with every order accounted for, and the accounting
catches a lost one (a real run with an order dropped by the gateway, and the accounting function alone)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ringbus.demo.scenario import (
    STEPS,
    Lifecycle,
    account,
    expected_outcome,
    make_orders,
    percentile,
)

pytest.importorskip("uvicorn", reason="the demo's HTTP gateway needs the http extra (starlette, uvicorn, httpx)")
pytest.importorskip("starlette", reason="the demo's HTTP gateway needs the http extra (starlette, uvicorn, httpx)")
pytest.importorskip("httpx", reason="the demo's customers use httpx (the http extra)")

SUMMARY = re.compile(r"^demo: (OK|FAILED) (\d+) orders placed: (\d+) completed, (\d+) compensated, (\d+) lost",
                     re.MULTILINE)


def run_demo(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "ringbus.demo", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def alive_services(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running a demo service (a pid reused by something else does not count)."""
    alive = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ringbus.demo.services" in cmdline or b"ringbus\x00broker" in cmdline:
            alive.append(pid)
    return alive


def test_demo_runs_every_order_to_an_end_and_cleans_up() -> None:
    result = run_demo("--orders", "40", "--plain")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    match = SUMMARY.search(out)
    assert match, out
    verdict, placed, completed, compensated, lost = match.groups()
    orders = make_orders(40, 7)
    want_compensated = sum(expected_outcome(o) == "compensated" for o in orders)
    assert (verdict, int(placed), int(lost)) == ("OK", 40, 0)
    assert (int(completed), int(compensated)) == (40 - want_compensated, want_compensated)
    # The summary table: latency percentiles, broker messages, and what each pattern did.
    assert re.search(r"p50 / p95 / p99\s+[\d,]+ ms / [\d,]+ ms / [\d,]+ ms", out), out
    assert re.search(r"^\s+messages\s+[\d,]+$", out, re.MULTILINE), out
    assert re.search(r"as scenario / as store\s+40 / 40 of 40", out), out
    assert re.search(r"events / orders in order\s+\d+ / 40", out), out
    assert re.search(r"dashboard / e-mails\s+40 / 40", out), out
    claimed = re.search(r"invoices inline / claimed\s+(\d+) / (\d+)", out)
    assert claimed and int(claimed.group(2)) >= 1, out  # at least one invoice of a few MiB went by claim check
    # It cleaned up: the data directory is gone and no service or broker process is left.
    data = re.search(r"data (/\S+ringbus-demo-\S+)", out)
    assert data and not Path(data.group(1)).exists(), out
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    pids += [int(p) for p in re.findall(r"\(process (\d+)\)", out)]
    assert len(pids) == 7, out  # broker + tracker, notifier, orders, 2 agents, gateway
    assert alive_services(pids) == []


def test_demo_exits_nonzero_when_an_order_is_lost() -> None:
    # The hidden flag makes the gateway accept one order (202) and drop it: the ids must not add up.
    result = run_demo("--orders", "12", "--quiet", "--idle", "2", "--lose-one-for-test")
    assert result.returncode == 1, result.stdout + result.stderr
    match = SUMMARY.search(result.stdout)
    assert match, result.stdout
    assert match.group(1) == "FAILED" and match.group(5) == "1", result.stdout
    assert "1 lost (ord-00007)" in result.stdout  # the order in the middle, named


# -- the accounting, alone -----------------------------------------------------------------------------------------

def test_account_finds_a_missing_id() -> None:
    placed = ["a", "b", "c"]
    book = account(placed, {"a": "completed", "c": "compensated"})
    assert book.lost == ["b"] and not book.ok and book.exit_code == 1
    assert (book.placed, book.completed, book.compensated) == (3, 1, 1)
    assert book.problems() == ["1 lost (b)"]
    assert account(placed, {"a": "completed", "b": "completed", "c": "compensated"}).exit_code == 0


def test_account_checks_status_scenario_store_and_lifecycle() -> None:
    finals = {"a": "completed", "b": "compensation_failed", "c": "compensated", "x": "completed"}
    book = account(["a", "b", "c"], finals, expected={"a": "completed", "b": "compensated", "c": "completed"},
                   store={"a": "completed", "b": "compensation_failed", "c": "running"}, invalid=["a"])
    assert book.failed == ["b"]  # ended, but not completed or compensated
    assert sorted(book.unexpected) == ["b", "c"]  # not what the scenario says
    assert book.disagreeing == ["c"]  # the notification and the workflow store differ
    assert book.invalid == ["a"] and book.unknown == ["x"] and book.lost == []
    assert book.exit_code == 1


def test_lifecycle_accepts_the_orders_of_the_workflow_and_flags_the_rest() -> None:
    def run(events: list[str]) -> Lifecycle:
        life = Lifecycle("o")
        for event in events:
            life.apply(event)
        return life

    happy = ["accepted", "paid", "reserved", "invoiced", "shipped", "completed"]
    assert run(happy).violations == [] and run(happy).final == "completed"
    undone = ["accepted", "paid", "reserved", "invoiced", "undeliverable", "invoice_voided", "released", "refunded",
              "compensated"]
    assert run(undone).violations == []
    assert run(["accepted", "payment_declined", "compensated"]).violations == []
    # Out of order, undone in the wrong order, a step left done, a late event: each one flagged.
    assert run(["accepted", "reserved", "paid"]).violations
    assert run(["accepted", "paid", "reserved", "out_of_stock", "refunded", "released", "compensated"]).violations
    assert run(["accepted", "paid", "reserved", "out_of_stock", "released", "compensated"]).violations
    assert run([*happy, "shipped"]).violations
    assert run(["paid"]).violations
    assert len(STEPS) == 4


def test_orders_are_seeded_and_mixed() -> None:
    orders = make_orders(200, 7)
    assert orders == make_orders(200, 7) and orders != make_orders(200, 8)
    assert len({o["order"] for o in orders}) == 200
    outcomes = [expected_outcome(o) for o in orders]
    assert 10 <= outcomes.count("compensated") <= 60  # some of each kind of failure, most orders complete
    assert 20 <= sum(o["tier"] == "premium" for o in orders) <= 80
    bulk = [o for o in orders if o["lines"] > 1000]
    assert len(bulk) == 3 and all(expected_outcome(o) == "completed" for o in bulk)


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([1.0], 99) == 1.0
    assert percentile([], 50) != percentile([], 50)  # nan


def test_display_is_plain_off_a_terminal_and_rich_draws_the_same_rows() -> None:
    from ringbus.demo.display import Display, Progress, make_display

    rows = [("orders", "placed (HTTP 202)", "5 of 5"), ("orders", "lost", "0"), ("latency", "p50", "12 ms")]
    out = io.StringIO()
    display = make_display(quiet=False, out=out)  # a StringIO is no terminal: plain lines, rich or not
    assert type(display) is Display
    display.update(Progress(1.0, 5, 5, 5, 4, 1, 0, 0, 123), force=True)
    display.summary("title", rows)
    text = out.getvalue()
    assert "placed 5/5  finished 5 (completed 4, compensated 1)" in text and "broker 123 msgs" in text
    assert re.search(r"^  orders\n    placed \(HTTP 202\)\s+5 of 5\n    lost\s+0\n  latency\n", text, re.MULTILINE)
    quiet = io.StringIO()
    Display(quiet, quiet=True).update(Progress(1.0, 5, 5, 5, 4, 1, 0, 0, 123), force=True)
    assert quiet.getvalue() == ""

    pytest.importorskip("rich", reason="rich is optional: the demo draws bars and tables with it when installed")
    from ringbus.demo.display import RichDisplay

    fancy = io.StringIO()
    RichDisplay(fancy).summary("title", rows)
    lines = fancy.getvalue().splitlines()
    assert any("orders" in line and "placed (HTTP 202)" in line and "5 of 5" in line for line in lines)
    assert any("latency" in line and "12 ms" in line for line in lines)
