"""Scheduling agent supervisor: operations end completed or fully compensated, whatever fails or dies.

The big run is the issue's: order workflows (validate payment -> reserve inventory -> generate invoice -> ship)
with transient and permanent failures injected at every step, agents that die mid-step, and the scheduler +
supervisor process killed with SIGKILL and restarted. Every check compares three records: the plan (what each
order should do), the agents' call log (what they did), and the state store (what the scheduler wrote).
Default runs use ``ORDERS`` orders per backend; ``RINGBUS_FULL=1`` runs 200 everywhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ringbus
from ringbus.patterns import PatternStats, RetryPolicy
from ringbus.patterns.scheduler_agent_supervisor import (
    Agent,
    AgentStats,
    PermanentError,
    Retry,
    SQLiteStateStore,
    StateStore,
    Step,
    Task,
    Workflow,
    WorkflowDefinitionError,
    WorkflowEngine,
    WorkflowStats,
    declare_queues,
    idempotency_key,
    submit_many,
)
from ringbus.patterns.workflow.wire import TaskMessage, decode_report, encode, results_queue, tasks_queue

from .bus_fixtures import python_env, run_example, wait_until
from .workflow_orders import (
    AgentCrash,
    CallLog,
    check_operations,
    order_actions,
    order_workflow,
    plan,
    running,
    stop_agents,
)

pytestmark = pytest.mark.timeout(180)

FULL = os.environ.get("RINGBUS_FULL") == "1"
ORDERS = 1000 if FULL else 200
PEERS = str(Path(__file__).resolve().parent / "workflow_peers.py")


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Peer:
    """A child process of workflow_peers.py, up once it printed "ready"."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, PEERS, *args], stdout=subprocess.PIPE, text=True,
                                        env=python_env())
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.kill()
            raise AssertionError(f"peer {args} did not start: {line!r}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    started: list[Peer] = []
    yield started
    for peer in started:
        peer.kill()


def start_agents(url: str, name: str, log: CallLog, n: int, **options: Any) -> list[Agent]:
    agents = []
    for _ in range(n):
        agent = Agent(url, order_actions(log, **options), name=name, poll=0.1)
        agents.append(agent)
        try:
            agent.start()
        except AgentCrash:
            pass  # it took a task that kills it before start() returned: dead already, as planned
    return agents


def finished(store: StateStore) -> int:
    counts = store.counts()
    return sum(counts.get(s, 0) for s in ("completed", "compensated", "compensation_failed"))


# -- the run: every order completed or compensated, compensations exactly for what completed ---------------
# Engines that notice a dead consumer and give its task back within seconds: the broker (heartbeats), RabbitMQ (the
# connection closes), NATS (its ack wait, kept alive by in-progress acks, lapses). Redis gives it back only after
# the tasks queue's visibility timeout (an hour): there the supervisor's step timeout ends a killed agent process's
# attempt instead (docs/backends.md, feature table).
NOTICES_DEAD_CONSUMERS = ("tcp://", "ipc://", "amqp://", "amqps://", "nats://")


def test_orders_complete_or_compensate(url: str, tmp_path: Path, peers: list[Peer]) -> None:
    broker = not url.startswith("memory://")
    notices = url.startswith(NOTICES_DEAD_CONSUMERS)
    name = fresh("orders")
    log = CallLog(tmp_path / "calls.jsonl")
    orders = {f"order-{o['order']}": o for o in plan(ORDERS)}
    ids = list(orders)
    crash_once = {ids[5], ids[17]}  # these orders' first action attempt kills the agent thread running it
    # Two scheduler threads: reports of one operation may be handled by either (the store's compare-and-set).
    # Where only the step timeout ends the killed process's attempt, a short one keeps the test short.
    engine = WorkflowEngine(url, order_workflow(timeout=60.0 if notices or not broker else 5.0), name=name,
                            store=tmp_path / "wf.sqlite3", check_interval=0.2, schedulers=2)
    engine.start()
    agents: list[Agent] = []
    try:
        bus = ringbus.connect(url)
        try:
            hanging = None
            if broker:
                # An agent process that takes the first task and hangs in it: killed with SIGKILL mid-step.
                hanging = Peer("agent", url, str(log.path), "--hang", "--name", name)
                peers.append(hanging)
            engine.submit_many(bus, [orders[i] for i in ids], operation_ids=ids)
            if hanging is not None:
                wait_until(lambda: any(r["pid"] == hanging.pid for r in log.records()),
                           "the hanging agent began a task")
                hanging.kill()
            agents = start_agents(url, name, log, 6, crash_once=crash_once)
            wait_until(lambda: finished(engine.store) == ORDERS, f"{ORDERS} operations finished", 120)
        finally:
            bus.close()
        summary = check_operations(engine.store, log, orders)
        stats = engine.stats()
        dead = sum(not a.running for a in agents)
    finally:
        stop_agents(agents)
        engine.stop()
    killed = 2 + int(broker)  # two agent threads died in an action, and on the broker one agent process
    assert dead == 2
    assert summary["completed"] + summary["compensated"] == ORDERS
    assert summary["completed"] == sum(o.get("fail_mode", "ok") in ("ok", "transient") for o in orders.values())
    assert isinstance(stats, WorkflowStats) and isinstance(stats, PatternStats)
    assert (stats.operations_completed, stats.operations_compensated, stats.operations_running) == \
        (summary["completed"], summary["compensated"], 0)
    if notices or not broker:
        assert stats.lost == killed  # each dead agent's task came back and was reported lost, once
    else:
        # the two agent threads' buses gave their tasks back as they closed (lost); the killed process's task
        # stays with it until the visibility timeout, so its attempt ended at the step timeout
        assert stats.lost == killed - 1 and stats.timeouts >= 1
    assert stats.compensations == summary["compensations"]
    print(f"{ORDERS} orders: {summary}, {killed} agents killed; {stats}")


# -- kill -9 of the scheduler + supervisor process mid-run, twice: every operation still ends --------------------
@pytest.mark.integration
def test_engine_killed_and_restarted(tmp_path: Path, peers: list[Peer]) -> None:
    with ringbus.Broker(tmp_path / "broker", "tcp://127.0.0.1:0") as broker:
        url, name, store_path = broker.endpoint, "orders", tmp_path / "wf.sqlite3"
        log = CallLog(tmp_path / "calls.jsonl")
        orders = {f"order-{o['order']}": o for o in plan(ORDERS, seed=11)}
        engine = Peer("engine", url, str(store_path), "--name", name)
        peers.append(engine)
        agents = start_agents(url, name, log, 4, pause=(0.001, 0.004))
        store = SQLiteStateStore(store_path)
        try:
            bus = ringbus.connect(url)
            try:  # the engine runs in the child: start the operations through the bus, as any process can
                submit_many(bus, "order", list(orders.values()), name=name, operation_ids=list(orders))
            finally:
                bus.close()
            unfinished_at_kill = []
            for fraction in (3, 2):  # kill when a third, then when half, of the orders are done
                wait_until(lambda part=ORDERS // fraction: finished(store) >= part, f"1/{fraction} finished", 120)
                engine.kill()
                unfinished_at_kill.append(ORDERS - finished(store))
                engine = Peer("engine", url, str(store_path), "--name", name)
                peers.append(engine)
            wait_until(lambda: finished(store) == ORDERS, "every operation finished after the kills", 120)
            summary = check_operations(store, log, orders)
        finally:
            stop_agents(agents)
            store.close()
    assert all(n > 0 for n in unfinished_at_kill), unfinished_at_kill  # killed mid-run, with operations under way
    assert summary["completed"] + summary["compensated"] == ORDERS
    print(f"killed the engine with {unfinished_at_kill} operations unfinished; afterwards: {summary}")


# -- a crash between storing a step as scheduled and sending its task: the restart sends it ----------------------
class SchedulerCrash(BaseException):
    """Stands for kill -9 at the worst moment (the state stored, the task not sent yet)."""


class CrashingStore(SQLiteStateStore):
    def __init__(self, path: Path, crash_at: int) -> None:
        super().__init__(path)
        self.crash_at = crash_at
        self.scheduled_saves = 0
        self.crashed = threading.Event()

    def save(self, operation: Any, events: Any) -> bool:
        saved = super().save(operation, events)
        if saved and operation.active is not None and operation.active.state == "scheduled" \
                and not self.crashed.is_set():
            self.scheduled_saves += 1
            if self.scheduled_saves >= self.crash_at:
                self.crashed.set()
                raise SchedulerCrash(f"crash after storing {operation.id} {operation.active.step} as scheduled")
        return saved


def test_crash_between_store_and_send(url: str, tmp_path: Path) -> None:
    name = fresh("orders")
    log = CallLog(tmp_path / "calls.jsonl")
    orders = {f"order-{o['order']}": o for o in plan(40, seed=3)}
    crashing = CrashingStore(tmp_path / "wf.sqlite3", crash_at=25)
    first = WorkflowEngine(url, order_workflow(), name=name, store=crashing, check_interval=0.2).start()
    agents = start_agents(url, name, log, 3)
    bus = ringbus.connect(url)
    try:
        first.submit_many(bus, list(orders.values()), operation_ids=list(orders))
        assert crashing.crashed.wait(60)
        first.supervisor.stop()
        with pytest.raises(SchedulerCrash):
            first.scheduler.stop()
        stranded = crashing.scheduled()
        # A stranded task that did go out before the crash is sent again by the restart. A dedup window drops
        # the copy; an engine without one (RabbitMQ) queues it twice, and two agents may run it (at-least-once,
        # docs/patterns/scheduler-agent-supervisor.md, "Crash points").
        repeatable = [] if "dedup" not in bus.unsupported_features else [
            (op, active.step) for op in stranded if (active := crashing.load(op).active) is not None]
        second = WorkflowEngine(url, order_workflow(), name=name, store=tmp_path / "wf.sqlite3",
                                check_interval=0.2).start()
        try:
            assert second.supervisor.resent >= 1  # at least the task that never went out
            wait_until(lambda: finished(second.store) == 40, "every operation finished after the restart")
            summary = check_operations(second.store, log, orders, repeatable)
        finally:
            second.stop()
    finally:
        bus.close()
        stop_agents(agents)
        crashing.close()
    assert stranded and summary["completed"] + summary["compensated"] == 40


# -- timeouts, in simulated time -----------------------------------------------------------------------------------
class Clock:
    """Wall-clock stand-in for the scheduler and supervisor: it moves only when the test says."""

    def __init__(self) -> None:
        self.now = 1_000_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


FAST = RetryPolicy(base=0.001, jitter=False)


def slow_workflow(slow_attempts: int) -> Workflow:
    return Workflow("slow", [
        Step("pay", compensation="refund", retry=Retry(max_attempts=2, backoff=FAST)),
        Step("slow", compensation="undo_slow", timeout=10.0, retry=Retry(max_attempts=slow_attempts, backoff=FAST)),
        Step("after", retry=None),
    ])


class SlowActions:
    """``slow``'s first attempt blocks until ``release`` is set, then succeeds (too late)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[tuple[str, str, int]] = []
        self.keys: list[str] = []
        self.lock = threading.Lock()

    def registry(self) -> dict[str, Any]:
        def record(task: Task) -> None:
            with self.lock:
                self.calls.append((task.action, task.kind, task.attempt))
                self.keys.append(task.idempotency_key)

        def slow(task: Task) -> dict[str, int]:
            record(task)
            if task.attempt == 1:
                assert self.release.wait(60)
            return {"attempt": task.attempt}

        def plain(task: Task) -> None:
            record(task)

        return {"pay": plain, "refund": plain, "slow": slow, "undo_slow": plain, "after": plain}


def wait_running(engine: WorkflowEngine, op_id: str, step: str, attempt: int) -> None:
    def running() -> bool:
        op = engine.operation(op_id)
        return op is not None and op.active is not None and \
            (op.active.step, op.active.attempt, op.active.state) == (step, attempt, "running")
    wait_until(running, f"{step} attempt {attempt} running")


def test_timeout_gives_a_new_attempt(url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock, acts = Clock(), SlowActions()
    with running(url, tmp_path / "wf.sqlite3", slow_workflow(3), acts.registry(), clock=clock,
                 check_interval=0.02) as (engine, bus, agents):
        op_id = engine.submit(bus, {"order": 1}, operation_id="op-slow")
        wait_running(engine, op_id, "slow", 1)
        clock.advance(9.0)
        time.sleep(0.2)  # several supervisor rounds before the deadline: nothing happens
        assert engine.operation(op_id).active.attempt == 1  # type: ignore[union-attr]
        clock.advance(1.5)  # past started + 10 s
        assert engine.wait([op_id], timeout=30) == {op_id: "completed"}
        acts.release.set()  # attempt 1 finishes late: the step is already completed, nothing changes
        wait_until(lambda: sum(a.stats().processed for a in agents) == 4, "the late attempt returned")
        time.sleep(0.2)  # time for the scheduler to see its (ignored) result
        op = engine.operation(op_id)
        events = [(e.step, e.attempt, e.event) for e in engine.history(op_id)]
        stats = engine.stats()
    assert op is not None and op.status == "completed" and op.steps["slow"].attempt == 2
    assert op.steps["slow"].output == {"attempt": 2}
    assert ("slow", 1, "failed") in events and ("slow", 2, "completed") in events
    assert [e for e in events if e[0] == "after"] == [("after", 1, "scheduled"), ("after", 1, "running"),
                                                      ("after", 1, "completed")]
    assert sorted(k for k in acts.keys if ":slow:" in k) == [idempotency_key(op_id, "slow", "action", 1),
                                                            idempotency_key(op_id, "slow", "action", 2)]
    assert stats.timeouts == 1 and stats.retried == 1
    assert any(r.name.startswith("ringbus.scheduler_agent_supervisor") and "deadline" in r.getMessage()
               for r in caplog.records)


def test_late_success_after_giving_up_is_compensated(url: str, tmp_path: Path) -> None:
    clock, acts = Clock(), SlowActions()
    with running(url, tmp_path / "wf.sqlite3", slow_workflow(1), acts.registry(), clock=clock,
                 check_interval=0.02) as (engine, bus, _):
        op_id = engine.submit(bus, {"order": 2})
        wait_running(engine, op_id, "slow", 1)
        clock.advance(11.0)  # no retries for slow: it fails for good, pay is refunded
        assert engine.wait([op_id], timeout=30) == {op_id: "compensated"}
        assert [c[0] for c in acts.calls] == ["pay", "slow", "refund"]
        acts.release.set()  # ... and then slow did the work after all: it must be undone too
        wait_until(lambda: ("undo_slow", "compensate", 1) in acts.calls, "the late step compensated")
        assert engine.wait([op_id], timeout=30) == {op_id: "compensated"}
        op = engine.operation(op_id)
        events = [(e.step, e.event) for e in engine.history(op_id)]
    assert op is not None and {n: s.status for n, s in op.steps.items()} == {"pay": "compensated",
                                                                             "slow": "compensated"}
    assert ("slow", "late_success") in events and events[-1] == (None, "compensated")
    assert [c[0] for c in acts.calls] == ["pay", "slow", "refund", "undo_slow"]


def test_late_compensation_success_resumes_compensating(url: str, tmp_path: Path) -> None:
    """A compensation given up on (timed out) that then succeeds: the operation leaves compensation_failed and
    the earlier compensations run."""
    clock, release, calls = Clock(), threading.Event(), []

    def call(task: Task) -> None:
        calls.append((task.action, task.attempt))
        if task.action == "release" and task.attempt == 1:
            assert release.wait(60)
        if task.action == "ship":
            raise PermanentError("no carrier")

    once = Retry(max_attempts=1, backoff=FAST)
    wf = Workflow("order", [Step("pay", compensation="refund"),
                            Step("reserve", compensation="release", timeout=10.0, compensation_retry=once),
                            Step("ship")])
    actions = {name: call for name in ("pay", "refund", "reserve", "release", "ship")}
    with running(url, tmp_path / "wf.sqlite3", wf, actions, clock=clock, check_interval=0.02) as (engine, bus, _):
        op_id = engine.submit(bus, {})
        wait_until(lambda: ("release", 1) in calls and engine.operation(op_id).active.state == "running",  # type: ignore[union-attr]
                   "release running")
        clock.advance(11.0)
        assert engine.wait([op_id], timeout=30) == {op_id: "compensation_failed"}
        assert engine.stats().operations_compensation_failed == 1
        release.set()  # the release did happen: carry on with the refund
        wait_until(lambda: engine.operation(op_id).status == "compensated", "compensated")  # type: ignore[union-attr]
        op = engine.operation(op_id)
        stats = engine.stats()
    assert [c[0] for c in calls] == ["pay", "reserve", "ship", "release", "refund"]
    assert op is not None and {n: s.status for n, s in op.steps.items()} == \
        {"pay": "compensated", "reserve": "compensated", "ship": "failed"}
    assert (stats.operations_compensated, stats.operations_compensation_failed) == (1, 0)


# -- a compensation that fails for good: compensation_failed, and nothing before it is undone out of order ---------
def test_compensation_failing_for_good(url: str, tmp_path: Path) -> None:
    calls: list[str] = []

    def ok(task: Task) -> None:
        calls.append(task.action)

    def broken(task: Task) -> None:
        calls.append(task.action)
        raise ConnectionError("the warehouse system is down")

    def declined(task: Task) -> None:
        calls.append(task.action)
        raise PermanentError("card declined")

    fast = Retry(max_attempts=3, backoff=FAST)
    wf = Workflow("order", [Step("pay", compensation="refund", retry=fast, compensation_retry=fast),
                            Step("reserve", compensation="release", retry=fast, compensation_retry=fast),
                            Step("ship", retry=fast)])
    actions = {"pay": ok, "refund": ok, "reserve": ok, "release": broken, "ship": declined}
    with running(url, tmp_path / "wf.sqlite3", wf, actions, agents=1) as (engine, bus, _):
        op_id = engine.submit(bus, {})
        assert engine.wait([op_id], timeout=30) == {op_id: "compensation_failed"}
        op = engine.operation(op_id)
        stats = engine.stats()
    # release is tried 3 times; refund never runs (it would undo pay while reserve is still in place).
    assert calls == ["pay", "reserve", "ship", "release", "release", "release"]
    assert op is not None and {n: s.status for n, s in op.steps.items()} == \
        {"pay": "completed", "reserve": "compensation_failed", "ship": "failed"}
    assert stats.operations_compensation_failed == 1 and stats.dead_lettered == 2


# -- agents ----------------------------------------------------------------------------------------------------
def test_agent_runs_a_repeated_task_once(url: str) -> None:
    """The same task (same idempotency key) delivered twice: run once, the result sent again."""
    name = fresh("dup")
    calls: list[str] = []
    agent = Agent(url, {"pay": lambda task: calls.append(task.idempotency_key) or {"paid": True}}, name=name,
                  poll=0.05).start()
    bus = ringbus.connect(url)
    try:
        declare_queues(bus, name)
        task = TaskMessage("op-1", "order", "pay", "action", "pay", 1, idempotency_key("op-1", "pay", "action", 1))
        unknown = TaskMessage("op-2", "order", "x", "action", "nope", 1, idempotency_key("op-2", "x", "action", 1))
        for message in (task, task, unknown):
            bus.send(tasks_queue(name), encode(message))
        # The agent answers the repeat with its first result again, sent with a dedup_id: a dedup window drops that
        # copy; on an engine without one (RabbitMQ) it arrives too (the scheduler's compare-and-set ignores it).
        again = [("result", "op-1", True)] if "dedup" in bus.unsupported_features else []
        expected = [("started", "op-1", False), ("result", "op-1", True), *again,
                    ("started", "op-2", False), ("result", "op-2", False)]
        reports = []
        while len(reports) < len(expected):
            message = bus.receive(results_queue(name), timeout=30)
            assert message is not None
            reports.append(decode_report(message.body))
            message.ack()
        stats = agent.stats()
    finally:
        bus.close()
        agent.stop()
    assert calls == ["op-1:pay:1"]
    assert [(r.type, r.op, r.ok) for r in reports] == expected
    assert all(r.output == {"paid": True} for r in reports if r.type == "result" and r.op == "op-1")
    assert reports[-1].error["Error"] == "ActionNotFound" and "'nope'" in reports[-1].error["Cause"]
    assert isinstance(stats, AgentStats) and (stats.processed, stats.failed, stats.duplicates) == (1, 1, 1)


# -- the state store ---------------------------------------------------------------------------------------------
def test_sqlite_store_compare_and_set(tmp_path: Path) -> None:
    from ringbus.patterns.scheduler_agent_supervisor import Event, OperationState

    with SQLiteStateStore(f"sqlite://{tmp_path}/elsewhere/ops.db") as store:
        assert isinstance(store, StateStore) and (tmp_path / "elsewhere" / "ops.db").exists()
        op = OperationState("op-1", "order", "running", {"n": 1}, created_at=1.0, updated_at=1.0)
        assert store.create(op, [Event("op-1", 1.0, None, "operation", 0, "started")])
        assert not store.create(OperationState("op-1", "order", "running"), [])
        a, b = store.load("op-1"), store.load("op-1")
        assert a is not None and b is not None and a.version == b.version == 1
        a.status = "completed"
        assert store.save(a, [Event("op-1", 2.0, None, "operation", 0, "completed")])
        b.status = "compensating"
        assert not store.save(b, [])  # b read version 1; a wrote version 2 first
        loaded = store.load("op-1")
        assert loaded is not None and (loaded.status, loaded.version, loaded.input) == ("completed", 2, {"n": 1})
        assert [e.event for e in store.history("op-1")] == ["started", "completed"]
        assert store.counts() == {"completed": 1} and store.ids("completed") == ["op-1"]
    with pytest.raises(RuntimeError, match="closed"):
        store.load("op-1")


def test_default_store_lives_in_the_data_dir(tmp_path: Path) -> None:
    engine = WorkflowEngine("memory://default-store", order_workflow(), data_dir=tmp_path / "data")
    try:
        assert isinstance(engine.store, SQLiteStateStore)
        assert engine.store.path == tmp_path / "data" / "workflows.sqlite3"
    finally:
        engine.stop()


# -- bad arguments -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, error, words", [
    (lambda: Step(""), ValueError, "Step.name"),
    (lambda: Step("a", timeout=0), ValueError, "timeout"),
    (lambda: Step("a", timeout="5"), TypeError, "timeout"),
    (lambda: Step("a", retry=3), TypeError, "retry"),
    (lambda: Step("a", next="b", end=True), ValueError, "not both"),
    (lambda: Retry(max_attempts=0), ValueError, "max_attempts"),
    (lambda: Retry(errors=()), ValueError, "errors"),
    (lambda: Retry(backoff=0.5), TypeError, "backoff"),
    (lambda: Workflow("w", []), WorkflowDefinitionError, "steps"),
    (lambda: Workflow("w", [Step("a"), Step("a")]), WorkflowDefinitionError, "steps[1].name"),
    (lambda: Workflow("w", [Step("a", next="zz")]), WorkflowDefinitionError, "steps[0].next: 'zz' is not a step"),
    (lambda: Workflow("w", [Step("a"), Step("b", next="a")]), WorkflowDefinitionError, "closes a cycle"),
    (lambda: Workflow("w", [Step("a", end=True), Step("b")]), WorkflowDefinitionError, "not reachable"),
    (lambda: Agent("memory://x", ["pay"]), TypeError, "actions"),
    (lambda: Agent("memory://x", {"pay": 1}), TypeError, "actions['pay']"),
    (lambda: Agent(5, {}), TypeError, "url"),
    (lambda: SQLiteStateStore(":memory:"), ValueError, "path"),
])
def test_bad_arguments_are_named(make: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as info:
        make()
    assert words in str(info.value)


@pytest.mark.parametrize("options, error, words", [
    ({"workflows": order_workflow(timeout=4000.0)}, ValueError, "task_visibility"),
    ({"workflows": [order_workflow(), order_workflow()]}, ValueError, "two workflows"),
    ({"workflows": "order"}, TypeError, "workflows"),
    ({"name": "bad name"}, ValueError, "name"),
    ({"store": 42}, TypeError, "store"),
    ({"check_interval": 0}, ValueError, "interval"),
    ({"prefetch": 0}, ValueError, "prefetch"),
    ({"schedulers": 0}, ValueError, "schedulers"),
])
def test_bad_engine_arguments_are_named(tmp_path: Path, options: dict[str, Any], error: type[Exception],
                                        words: str) -> None:
    arguments: dict[str, Any] = {"workflows": order_workflow(), "store": tmp_path / "wf.db", **options}
    with pytest.raises(error) as info:
        WorkflowEngine("memory://bad-arguments", **arguments)
    assert words in str(info.value)


def test_submit_checks_its_input(tmp_path: Path) -> None:
    engine = WorkflowEngine("memory://submit-checks", order_workflow(), store=tmp_path / "wf.db")
    bus = ringbus.connect("memory://submit-checks")
    try:
        with pytest.raises(TypeError, match="JSON"):
            engine.submit(bus, {"when": object()})
        with pytest.raises(ValueError, match="workflow 'nope'"):
            engine.submit(bus, {}, workflow="nope")
    finally:
        bus.close()
        engine.stop()


# -- the example --------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_example_runs() -> None:
    out = run_example("order_workflow.py")
    assert "compensated" in out and "loaded from ASL" in out
    assert "0 operations left running" in out
