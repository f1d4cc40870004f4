"""How an operation moves: one report (start, started, result, lost, timeout) in, the new state and the task
messages to send out. Shared by the scheduler (reports from agents and clients) and the supervisor (timeouts).

Rules (docs/patterns/scheduler-agent-supervisor.md has the long form):

- An operation waits for one task at a time (``OperationState.active``): a step's action, or a compensation.
- A failure of the active attempt (an error, ``States.Timeout``, ``States.HeartbeatTimeout``) is retried by the
  first retry rule whose errors match, while that rule has retries left; a :class:`PermanentError` never is.
- A step that fails for good goes to its first matching ``Catch`` (the recovery path; the operation ends
  ``compensated``), or else the operation compensates: the compensations of its completed steps run one at a
  time, latest completed first; then it is ``compensated``. A compensation that fails for good, or a failure on
  the recovery path, ends it ``compensation_failed``.
- A success is accepted from any attempt of a step that has not completed (an attempt given up as timed out may
  still finish); one that comes after the step failed for good makes it completed again, and its compensation
  runs too.
- Reports for attempts that are not active (duplicates, late failures) change nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ringbus.patterns._stats import PatternStats, StatsCounter
from ringbus.patterns.workflow.definition import (
    HEARTBEAT_TIMEOUT,
    TIMEOUT,
    Retry,
    Step,
    Workflow,
    error_matches,
)
from ringbus.patterns.workflow.store import Active, Event, OperationState, StateStore, StepState
from ringbus.patterns.workflow.wire import Report, TaskMessage, idempotency_key

__all__ = ["Engine", "Outgoing", "UnknownWorkflow", "WorkflowStats", "workflow_stats"]

log = logging.getLogger("ringbus.scheduler_agent_supervisor")

_CAS_TRIES = 50


@dataclass(frozen=True)
class WorkflowStats(PatternStats):
    """:class:`PatternStats` of a scheduler or supervisor, plus the operations in its store.

    ``processed``: attempts that succeeded (actions and compensations), ``failed``: attempts that failed
    (errors, timeouts, lost agents), ``retried``: new attempts after a failure, ``dead_lettered``: steps and
    compensations that failed for good, ``in_flight``: operations under way (running or compensating).
    The ``operations_*`` counts come from the state store (every process's operations); the other counts are
    this process's since it started.
    """

    operations_running: int  # running or compensating
    operations_completed: int
    operations_compensated: int
    operations_compensation_failed: int
    timeouts: int  # attempts given up as States.Timeout
    lost: int  # attempts whose agent went away (States.HeartbeatTimeout)
    compensations: int  # compensations that succeeded


_last_counts: dict[int, dict[str, int]] = {}  # store id -> the counts read last (for stats after a stop)


def workflow_stats(engines: list[Engine], store: StateStore) -> WorkflowStats:
    """The stats of ``engines`` (their counts added up) and of the operations in ``store``.

    After the store was closed (the engine stopped), the operation counts are the last ones read.
    """
    try:
        counts = store.counts()
        _last_counts[id(store)] = counts
    except RuntimeError:  # closed
        counts = _last_counts.get(id(store), {})
    running = counts.get("running", 0) + counts.get("compensating", 0)
    snaps = [engine.counter.snapshot() for engine in engines]
    extra: dict[str, int] = {}
    for engine in engines:
        with engine._lock:
            for name, value in engine.extra.items():
                extra[name] = extra.get(name, 0) + value
    return WorkflowStats(sum(s.processed for s in snaps), sum(s.failed for s in snaps), sum(s.retried for s in snaps),
                         sum(s.dead_lettered for s in snaps), running, sum(s.rate for s in snaps), running,
                         counts.get("completed", 0), counts.get("compensated", 0),
                         counts.get("compensation_failed", 0), extra.get("timeouts", 0), extra.get("lost", 0),
                         extra.get("compensations", 0))


class UnknownWorkflow(LookupError):
    """A report names a workflow this engine was not given."""


@dataclass
class Outgoing:
    """A task message to send once the state that scheduled it is stored."""

    task: TaskMessage
    delay: float

    @property
    def dedup_id(self) -> str:
        return f"task:{self.task.key}"


class _Change:
    """The changes one report makes to one operation (applied to ``op`` in place)."""

    def __init__(self, op: OperationState, workflow: Workflow, now: float) -> None:
        self.op = op
        self.wf = workflow
        self.now = now
        self.events: list[Event] = []
        self.outgoing: list[Outgoing] = []
        self.counts: dict[str, int] = {}

    def count(self, **deltas: int) -> None:
        for name, value in deltas.items():
            self.counts[name] = self.counts.get(name, 0) + value

    def event(self, step: str | None, kind: str, attempt: int, event: str, detail: str = "") -> None:
        self.events.append(Event(self.op.id, self.now, step, kind, attempt, event, detail))

    # -- scheduling ---------------------------------------------------------------------------------------------
    def schedule(self, step: str, kind: str, attempt: int, delay: float, input: Any = None) -> None:
        op = self.op
        state = op.steps.get(step)
        if state is None:
            state = op.steps[step] = StepState(step, "scheduled")
        if kind == "action":
            state.status, state.attempt = "scheduled", attempt
            if attempt == 1:
                state.input = input
                state.retries = [0] * len(self.wf.steps[step].rules)
        else:
            state.status, state.compensation_attempt = "compensating", attempt
            if attempt == 1:
                state.compensation_retries = [0] * len(self.wf.steps[step].compensation_rules)
        state.updated_at = self.now
        op.active = Active(step, kind, attempt, "scheduled", self.now + delay)
        self.event(step, kind, attempt, "scheduled", f"in {delay:.3f} s" if delay > 0 else "")
        self.outgoing.append(Outgoing(task_message(op, self.wf), delay))

    def advance(self, step: StepState) -> None:
        following = self.wf.next_of(step.name)
        if following is not None:
            self.schedule(following, "action", 1, 0.0, input=step.output if step.output is not None else step.input)
            return
        if self.op.caught:
            self.finish("compensated", f"recovered by {step.name!r} after a caught {self.op.error!r}")
        else:
            self.op.output = step.output
            self.finish("completed")

    def finish(self, status: str, detail: str = "") -> None:
        self.op.status = status
        self.op.active = None
        self.event(None, "operation", 0, status, detail)
        self.count(**{f"operations_{status}": 1})

    def compensate_next(self) -> None:
        """Schedule the compensation of the latest completed step not compensated yet, or finish."""
        op = self.op
        if op.active is not None:
            return
        pending = [s for s in op.steps.values()
                   if s.status == "completed" and self.wf.steps[s.name].compensation is not None]
        if not pending:
            self.finish("compensated", f"after {op.error['Error'] if op.error else 'a failure'}")
            return
        step = max(pending, key=lambda s: s.seq or 0)
        self.schedule(step.name, "compensate", 1, 0.0)

    # -- reports ------------------------------------------------------------------------------------------------
    def started(self, report: Report) -> None:
        active = self.op.active
        if (active is None or active.state != "scheduled" or (active.step, active.kind, active.attempt)
                != (report.step, report.kind, report.attempt)):
            return
        step_def = self.wf.steps[report.step]
        active.state, active.deadline = "running", self.now + step_def.timeout
        state = self.op.steps[report.step]
        if report.kind == "action":
            state.status = "running"
        state.updated_at = self.now
        self.event(report.step, report.kind, report.attempt, "running", report.agent)

    def succeeded(self, report: Report) -> None:
        op, active = self.op, self.op.active
        state = op.steps.get(report.step)
        if state is None:
            return
        is_active = active is not None and (active.step, active.kind) == (report.step, report.kind)
        if report.kind == "compensate":
            if is_active:
                state.status, state.updated_at, op.active = "compensated", self.now, None
                self.event(report.step, "compensate", report.attempt, "compensated")
                self.count(processed=1, compensations=1)
                self.compensate_next()
            elif state.status == "compensation_failed" and op.status == "compensation_failed":
                # A compensation given up on (timed out) finished after all: carry on compensating.
                state.status, state.updated_at = "compensated", self.now
                self.event(report.step, "compensate", report.attempt, "compensated", "late success")
                op.status = "compensating"
                self.count(processed=1, compensations=1, operations_compensation_failed=-1)
                self.compensate_next()
            return
        if is_active and state.status in ("scheduled", "running"):
            state.status, state.output, state.seq = "completed", report.output, op.seq
            state.updated_at, op.seq, op.active = self.now, op.seq + 1, None
            self.event(report.step, "action", report.attempt, "completed")
            self.count(processed=1)
            self.advance(state)
        elif state.status == "failed":
            # Given up on (timed out, its agent lost), yet it did the work: it is completed, and must be undone.
            state.status, state.output, state.seq = "completed", report.output, op.seq
            state.updated_at, op.seq = self.now, op.seq + 1
            self.event(report.step, "action", report.attempt, "late_success")
            self.count(processed=1)
            if op.status == "compensated" and not op.caught:
                op.status = "compensating"
                self.count(operations_compensated=-1)
            if op.status == "compensating":
                self.compensate_next()

    def failed(self, report: Report, error: dict[str, Any], permanent: bool) -> None:
        op, active = self.op, self.op.active
        if active is None or (active.step, active.kind, active.attempt) != (report.step, report.kind, report.attempt):
            return
        if report.type == "timeout" and (active.state != "running" or (active.deadline or 0) > self.now):
            return
        step_def = self.wf.steps[report.step]
        state = op.steps[report.step]
        kind, name = report.kind, str(error.get("Error", "Error"))
        state.error, state.updated_at = error, self.now
        self.event(report.step, kind, report.attempt, "failed", f"{name}: {error.get('Cause', '')}"[:500])
        self.count(failed=1, timeouts=int(name == TIMEOUT), lost=int(name == HEARTBEAT_TIMEOUT))
        rules = step_def.rules if kind == "action" else step_def.compensation_rules
        used = state.retries if kind == "action" else state.compensation_retries
        rule = None if permanent else _first_match(rules, name)
        if rule is not None and used[rule] + 1 < rules[rule].max_attempts:
            used[rule] += 1
            self.count(retried=1)
            delay = rules[rule].backoff.delay(used[rule])
            self.schedule(report.step, kind, report.attempt + 1, delay)
            return
        op.active = None
        self.count(dead_lettered=1)
        if kind == "compensate":
            state.status = "compensation_failed"
            self.event(report.step, kind, report.attempt, "gave_up", name)
            self.finish("compensation_failed", f"the compensation of {report.step!r} failed: {name}")
            return
        state.status = "failed"
        self.event(report.step, kind, report.attempt, "gave_up", name)
        catch = next((c for c in step_def.catch if error_matches(c.errors, name)), None)
        if catch is not None:
            op.caught, op.error = True, error
            self.event(report.step, kind, report.attempt, "caught", f"{name} -> {catch.next}")
            self.schedule(catch.next, "action", 1, 0.0, input=dict(error))
        elif op.caught:
            self.finish("compensation_failed", f"{report.step!r} on the recovery path failed: {name}")
        else:
            op.status, op.error = "compensating", error
            self.event(None, "operation", 0, "compensating", f"{report.step!r} failed: {name}")
            self.compensate_next()


def _first_match(rules: tuple[Retry, ...], error: str) -> int | None:
    for i, rule in enumerate(rules):
        if error_matches(rule.errors, error):
            return i
    return None


def task_message(op: OperationState, workflow: Workflow) -> TaskMessage:
    """The task message of ``op``'s active task (what was sent, built again to resend it after a crash)."""
    active = op.active
    assert active is not None
    step_def: Step = workflow.steps[active.step]
    state = op.steps[active.step]
    if active.kind == "action":
        action, output = step_def.action, None
    else:
        action, output = step_def.compensation, state.output
    return TaskMessage(op.id, op.workflow, active.step, active.kind, action or "", active.attempt,
                       idempotency_key(op.id, active.step, active.kind, active.attempt), state.input, op.input,
                       output, op.error if op.caught else None)


class Engine:
    """Applies reports to operations in a :class:`StateStore` (compare-and-set, retried on conflicts)."""

    def __init__(self, workflows: Mapping[str, Workflow], store: StateStore, *, clock: Callable[[], float],
                 counter: StatsCounter) -> None:
        self.workflows = workflows
        self.store = store
        self.clock = clock
        self.counter = counter
        self.extra: dict[str, int] = {}
        self._lock = threading.Lock()

    def workflow(self, name: str) -> Workflow:
        try:
            return self.workflows[name]
        except KeyError:
            raise UnknownWorkflow(f"workflow {name!r} is not one of this engine's ({', '.join(self.workflows)})") \
                from None

    def handle(self, report: Report) -> list[Outgoing]:
        """Apply ``report``; return the task messages to send (after the state is stored)."""
        if report.type == "start":
            return self._start(report)
        for _ in range(_CAS_TRIES):
            op = self.store.load(report.op)
            if op is None:
                log.warning("report %r for unknown operation %r ignored", report.type, report.op)
                return []
            change = _Change(op, self.workflow(op.workflow), self.clock())
            if report.step not in change.wf.steps:
                log.error("report %r for step %r of operation %r: no such step in workflow %r", report.type,
                          report.step, op.id, op.workflow)
                return []
            if report.type == "started":
                change.started(report)
            elif report.type == "result" and report.ok:
                change.succeeded(report)
            elif report.type in ("result", "lost", "timeout"):
                error = (report.error if isinstance(report.error, dict)
                         else {"Error": "Error", "Cause": str(report.error)})
                if report.type == "lost":
                    error = {"Error": HEARTBEAT_TIMEOUT, "Cause": f"the agent running attempt {report.attempt} "
                             f"went away (found by {report.agent or 'an agent'})"}
                elif report.type == "timeout":
                    error = {"Error": TIMEOUT, "Cause": f"attempt {report.attempt} ran past its timeout of "
                             f"{change.wf.steps[report.step].timeout:g} s"}
                change.failed(report, error, report.permanent)
            else:
                log.warning("unknown report type %r for operation %r ignored", report.type, report.op)
                return []
            if not change.events:
                return []
            op.updated_at = change.now
            if self.store.save(op, change.events):
                self._count(change.counts)
                return change.outgoing
        raise RuntimeError(f"operation {report.op!r}: {_CAS_TRIES} conflicting writers in a row")

    def _start(self, report: Report) -> list[Outgoing]:
        wf = self.workflow(report.workflow)
        now = self.clock()
        op = OperationState(report.op, wf.name, "running", report.input, created_at=now, updated_at=now)
        change = _Change(op, wf, now)
        change.event(None, "operation", 0, "started", wf.name)
        change.schedule(wf.start, "action", 1, 0.0, input=report.input)
        if not self.store.create(op, change.events):
            return []  # started before (a repeated start request)
        self._count({"operations_started": 1})
        return change.outgoing

    def _count(self, counts: dict[str, int]) -> None:
        base = {k: v for k, v in counts.items() if k in ("processed", "failed", "retried", "dead_lettered")}
        if base:
            self.counter.add(**base)
        with self._lock:
            for name, value in counts.items():
                if name not in base:
                    self.extra[name] = self.extra.get(name, 0) + value

    def resend(self, operation_id: str) -> list[Outgoing]:
        """The task message of a scheduled operation again (after a crash: it may never have been sent)."""
        op = self.store.load(operation_id)
        if op is None or op.active is None or op.active.state != "scheduled" or op.finished:
            return []
        wf = self.workflow(op.workflow)
        return [Outgoing(task_message(op, wf), max(0.0, op.active.due_at - self.clock()))]
