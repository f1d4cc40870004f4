"""The order workflow of the scheduling-agent-supervisor tests: definition, failure plan, actions, and the checks.

validate_payment -> reserve_inventory -> generate_invoice -> ship, each compensated (refund, release, void) but
ship. Each order's input says where it fails and how; every action call is appended as a JSON line to a log
file shared by the agents of every process (one ``os.write`` of a short line on an ``O_APPEND`` file), so that
the test can compare what the agents did with what the state store says.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ringbus
from ringbus.bus import Bus
from ringbus.patterns import RetryPolicy
from ringbus.patterns.scheduler_agent_supervisor import (
    Agent,
    PermanentError,
    Retry,
    StateStore,
    Step,
    Task,
    Workflow,
    WorkflowEngine,
)

STEPS = ["validate_payment", "reserve_inventory", "generate_invoice", "ship"]
COMPENSATIONS = {"validate_payment": "refund_payment", "reserve_inventory": "release_inventory",
                 "generate_invoice": "void_invoice"}
MAX_ATTEMPTS = 3
# ok / transient (fails 1 or 2 attempts, then succeeds) -> completed; exhaust (fails every attempt) /
# permanent (PermanentError, never retried) -> compensated; comp: permanent, and the first compensation
# attempt of the step before fails too (compensations retry).
MODES = ["ok", "ok", "ok", "transient", "transient", "exhaust", "permanent", "permanent", "comp", "comp"]


class TransientError(Exception):
    """A failure that goes away on a later attempt."""


class CardDeclined(PermanentError):
    """A failure no retry fixes."""


class AgentCrash(BaseException):
    """Raised by an action to kill the agent thread running it (memory://: a dead agent without a process)."""


def order_workflow(*, timeout: float = 60.0, base: float = 0.005) -> Workflow:
    retry = Retry(max_attempts=MAX_ATTEMPTS, backoff=RetryPolicy(base=base, factor=2.0, jitter=False))
    comp_retry = Retry(max_attempts=5, backoff=RetryPolicy(base=base, factor=2.0, jitter=False))
    return Workflow("order", [Step(name, compensation=COMPENSATIONS.get(name), timeout=timeout, retry=retry,
                                   compensation_retry=comp_retry) for name in STEPS])


def plan(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """Inputs of ``n`` orders: every mode at every step (order i: mode i % 10, step (i // 10) % 4)."""
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        mode = MODES[i % len(MODES)]
        step = (i // len(MODES)) % len(STEPS)
        if mode == "comp" and step == 0:
            step = 1 + rng.randrange(3)  # a compensation needs a completed step before the failing one
        order: dict[str, Any] = {"order": i, "amount": rng.randrange(5, 500)}
        if mode != "ok":
            order.update(fail_step=STEPS[step], fail_mode=mode, fail_times=1 + i % 2)
        if mode == "comp":
            order["comp_fail"] = STEPS[step - 1]
        orders.append(order)
    return orders


def expected(order: dict[str, Any]) -> tuple[str, list[str]]:
    """(final status, the steps that complete) for an order of :func:`plan`."""
    mode = order.get("fail_mode", "ok")
    if mode in ("ok", "transient"):
        return "completed", list(STEPS)
    return "compensated", STEPS[:STEPS.index(order["fail_step"])]


class CallLog:
    """Append-only JSON lines shared by threads and processes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, **record: Any) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def order_actions(log: CallLog, *, hang: bool = False, pause: tuple[float, float] = (0.0, 0.0),
                  crash_once: set[str] | None = None) -> dict[str, Callable[[Task], Any]]:
    """The registry of an agent: the four actions and three compensations, failing as each order's input says.

    ``hang``: every action writes its ``begin`` line and then sleeps (the agent process is killed meanwhile).
    ``pause``: each call sleeps uniform(*pause) seconds first. ``crash_once``: operation ids whose first
    action attempt kills the agent thread (:class:`AgentCrash`) after its ``begin`` line.
    """
    rng = random.Random()
    crash = crash_once if crash_once is not None else set()  # shared by the agents given the same set

    def make(step: str, kind: str) -> Callable[[Task], Any]:
        def run(task: Task) -> Any:
            order = task.original
            log.write(op=task.operation_id, step=step, kind=kind, attempt=task.attempt, event="begin",
                      key=task.idempotency_key, pid=os.getpid())
            if hang:
                time.sleep(3600)
            if task.operation_id in crash and kind == "action":
                crash.discard(task.operation_id)
                raise AgentCrash(f"agent thread dies running {task.idempotency_key}")
            if pause[1] > 0:
                time.sleep(rng.uniform(*pause))
            if kind == "action" and order.get("fail_step") == step:
                mode = order["fail_mode"]
                if mode == "permanent":
                    raise CardDeclined(f"order {order['order']}: {step} refused")
                if mode in ("exhaust", "comp") or task.attempt <= order["fail_times"]:
                    raise TransientError(f"order {order['order']}: {step} attempt {task.attempt} failed")
            if kind == "compensate" and order.get("comp_fail") == step and task.attempt == 1:
                raise TransientError(f"order {order['order']}: compensation of {step} attempt 1 failed")
            log.write(op=task.operation_id, step=step, kind=kind, attempt=task.attempt, event="effect",
                      key=task.idempotency_key, pid=os.getpid())
            return {"order": order["order"], "step": step, "by": os.getpid()}
        return run

    actions = {step: make(step, "action") for step in STEPS}
    actions.update({COMPENSATIONS[step]: make(step, "compensate") for step in COMPENSATIONS})
    return actions


def check_operations(store: StateStore, log: CallLog, orders: dict[str, dict[str, Any]],
                     repeatable: Collection[tuple[str, str]] = ()) -> dict[str, int]:
    """Assert that every operation ended as its plan says, that the agents' effects are exactly the completed
    steps, compensated exactly once each in reverse order, and that the store's step states and attempt counts
    match the calls. Returns counts for the test's report.

    ``repeatable``: (operation, step) pairs whose task may have been queued twice (resent after a crash on an
    engine without dedup): their calls may repeat, and count once here."""
    effects: dict[str, list[tuple[str, str]]] = defaultdict(list)
    begins: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for r in log.records():
        again = (r["op"], r["step"]) in repeatable
        if r["event"] == "effect" and not (again and (r["kind"], r["step"]) in effects[r["op"]]):
            effects[r["op"]].append((r["kind"], r["step"]))
        elif r["event"] == "begin" and not (again and r["attempt"] in begins[(r["op"], r["step"], r["kind"])]):
            begins[(r["op"], r["step"], r["kind"])].append(r["attempt"])
    summary = {"completed": 0, "compensated": 0, "compensations": 0, "attempts": 0}
    assert set(store.ids()) == set(orders), "the store holds exactly the submitted operations"
    for op_id, order in orders.items():
        op = store.load(op_id)
        assert op is not None
        status, done = expected(order)
        assert op.status == status, (op_id, order, op.status, store.history(op_id))
        actions = [step for kind, step in effects[op_id] if kind == "action"]
        undone = [step for kind, step in effects[op_id] if kind == "compensate"]
        # Each completed step's effect happened once, in workflow order; each compensation once, in reverse.
        assert actions == done, (op_id, order, effects[op_id])
        assert undone == [s for s in reversed(done) if s in COMPENSATIONS and status == "compensated"], \
            (op_id, order, effects[op_id])
        summary[status] += 1
        summary["compensations"] += len(undone)
        assert op.active is None
        steps = {name: s.status for name, s in op.steps.items()}
        if status == "completed":
            assert steps == {s: "completed" for s in STEPS}, (op_id, steps)
        else:
            want = {s: "compensated" for s in done}
            want[order["fail_step"]] = "failed"
            assert steps == want, (op_id, order, steps)
        for name, s in op.steps.items():
            tried = begins[(op_id, name, "action")]
            # Every attempt the store counts was begun by exactly one agent, once.
            assert sorted(tried) == list(range(1, s.attempt + 1)), (op_id, name, tried, s.attempt)
            summary["attempts"] += s.attempt
            if s.status == "compensated":
                assert sorted(begins[(op_id, name, "compensate")]) == list(range(1, s.compensation_attempt + 1))
    return summary


def stop_agents(agents: list[Agent]) -> None:
    """Stop them all at once (an idle agent takes up to its receive's wait to notice)."""
    def stop(agent: Agent) -> None:
        try:
            agent.stop()
        except AgentCrash:
            pass  # the agents the test killed on purpose

    threads = [threading.Thread(target=stop, args=(agent,)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


@contextmanager
def running(url: str, store: Any, workflow: Workflow, actions: dict[str, Any], *, agents: int = 2,
            clock: Callable[[], float] = time.time, check_interval: float = 0.2,
            prefix: str = "wf") -> Iterator[tuple[WorkflowEngine, Bus, list[Agent]]]:
    """An engine (under a fresh name), ``agents`` agents with ``actions`` and a bus of this thread; all stopped
    at the end."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    engine = WorkflowEngine(url, workflow, name=name, store=store, clock=clock, check_interval=check_interval)
    engine.start()
    started = [Agent(url, actions, name=name, poll=0.05).start() for _ in range(agents)]
    bus = ringbus.connect(url)
    try:
        yield engine, bus, started
    finally:
        bus.close()
        stop_agents(started)
        engine.stop()
