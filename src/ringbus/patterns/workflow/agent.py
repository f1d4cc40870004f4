"""Agents: take task messages, run the named action from their registry, report back on the results queue.

An agent never touches the state store. For each task it sends ``started``, runs the action, sends the result
(``ok`` with the action's return value, or the error's class name and text), then acks the task. A task that
comes back to the queue (``message.attempts > 0``) was held by an agent that went away mid-step (its broker
session ran out of heartbeats): the agent that gets it does not run it but reports it ``lost``
(``States.HeartbeatTimeout``), and the scheduler decides on a new attempt with a new idempotency key.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ringbus.bus import Bus, check_seconds, connect
from ringbus.message import Message, new_id
from ringbus.patterns._handling import send_deduplicated
from ringbus.patterns._lifecycle import BackgroundConsumer
from ringbus.patterns._stats import PatternStats, StatsCounter
from ringbus.patterns.workflow.definition import RUNTIME
from ringbus.patterns.workflow.wire import (
    REPORT_PRIORITY,
    Report,
    TaskMessage,
    check_engine_name,
    declare_queues,
    decode_task,
    encode,
    results_queue,
    tasks_queue,
)

__all__ = ["Agent", "AgentStats", "Task", "PermanentError"]

log = logging.getLogger("ringbus.scheduler_agent_supervisor.agent")

ACTION_NOT_FOUND = "ActionNotFound"
MAX_CAUSE = 2000


class PermanentError(Exception):
    """Raise (or subclass) in an action that can never succeed (a declined card): no retries, the step fails
    for good at once. The error name reported is the exception's class name."""


@dataclass(frozen=True)
class Task:
    """What an action receives.

    ``input`` is the step's input (the previous step's output, the operation's input for the first step, or
    ``{"Error", "Cause"}`` for the target of a Catch); ``original`` the operation's input; ``output`` (for a
    compensation) what the step being undone returned; ``error`` (on a recovery path) the caught error.
    ``idempotency_key`` is the same for every delivery of one attempt; ``step_key`` the same for every attempt
    of the step: an action with outside effects dedupes on one of them.
    """

    operation_id: str
    workflow: str
    step: str
    kind: str  # "action" or "compensate"
    action: str
    attempt: int
    idempotency_key: str
    input: Any = None
    original: Any = None
    output: Any = None
    error: Any = None

    @property
    def step_key(self) -> str:
        key = f"{self.operation_id}:{self.step}"
        return key if self.kind == "action" else f"{key}:compensate"


@dataclass(frozen=True)
class AgentStats(PatternStats):
    """:class:`PatternStats` (processed: tasks that succeeded) plus what only an agent sees."""

    lost: int  # tasks found back on the queue (their agent died) and reported lost
    duplicates: int  # tasks this agent had already run (same idempotency key): the result sent again


def _cause(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= MAX_CAUSE else text[:MAX_CAUSE - 3] + "..."


class Agent(BackgroundConsumer):
    """Run the actions of the tasks on ``<name>.tasks``; one task at a time (start several for more).

    Parameters
    ----------
    url : str
        The bus (the agent opens its own connection in the thread that runs it).
    actions : mapping of str to callable
        The registry: action (and compensation) name -> ``fn(task: Task) -> JSON-serializable result``.
        Raising fails the attempt (retried per the step's rules); raising :class:`PermanentError` fails the
        step for good.
    name : str
        The engine's name (its queues are ``<name>.tasks`` and ``<name>.results``).
    poll : float
        Seconds a receive waits before the agent looks at :meth:`stop`.
    task_visibility : float
        The tasks queue's visibility timeout; the same on every participant, longer than any step's timeout.
    remember : int
        Results kept by idempotency key, so that a task delivered again is answered without running again.
    agent_id : str, optional
        How reports name this agent (default: a new id).
    """

    def __init__(self, url: str, actions: Mapping[str, Callable[[Task], Any]], *, name: str = "workflow",
                 poll: float = 0.25, task_visibility: float = 3600.0, remember: int = 10_000,
                 agent_id: str | None = None) -> None:
        super().__init__(url, self._handle)
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions must be a mapping of action name to callable, not {type(actions).__name__}")
        for action, fn in actions.items():
            if not isinstance(action, str) or not callable(fn):
                raise TypeError(f"actions[{action!r}] must be a callable under a str name, got {fn!r}")
        self.actions = dict(actions)
        self.name = check_engine_name(name)
        self.poll = check_seconds("poll", poll, allow_zero=False)
        self.task_visibility = check_seconds("task_visibility", task_visibility, allow_zero=False)
        if isinstance(remember, bool) or not isinstance(remember, int) or remember < 0:
            raise ValueError(f"remember must be an int >= 0, got {remember!r}")
        self.remember = remember
        self.agent_id = agent_id or f"agent-{new_id()[:8]}"
        self._done: OrderedDict[str, bytes] = OrderedDict()
        self._counter = StatsCounter()
        self._lost = self._duplicates = 0
        self._lock = threading.Lock()

    _log = log

    def _run(self, stop: threading.Event, ready: Callable[[], None]) -> None:
        bus = connect(self.url)
        try:
            declare_queues(bus, self.name, task_visibility=self.task_visibility)
            ready()
            tasks = tasks_queue(self.name)
            while not stop.is_set():
                message = bus.receive(tasks, timeout=self.poll)
                if message is not None:
                    self._handle(bus, message)
        finally:
            bus.close()

    def _report(self, bus: Bus, body: bytes, dedup_id: str | None = None) -> None:
        report = Message(body, priority=REPORT_PRIORITY)
        if dedup_id is None:
            bus.send(results_queue(self.name), report)
        else:
            send_deduplicated(bus, results_queue(self.name), report, dedup_id)

    def _handle(self, bus: Bus, message: Message) -> None:
        try:
            task = decode_task(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("task message %s is not a task (%s); dead-lettering it", message.id, exc)
            message.reject()
            self._counter.add(failed=1, dead_lettered=1)
            return
        done = self._done.get(task.key)
        if done is not None:
            self._report(bus, done, dedup_id=f"result:{task.key}")
            message.ack()
            with self._lock:
                self._duplicates += 1
            return
        if message.attempts > 0:
            # Delivered before, never settled: the agent that had it died (or lost its broker) mid-step.
            log.warning("task %s came back to the queue (delivery %d): its agent went away; reporting it lost",
                        task.key, message.attempts + 1)
            self._report(bus, encode(Report("lost", task.op, workflow=task.workflow, step=task.step, kind=task.kind,
                                            attempt=task.attempt, agent=self.agent_id)))
            message.ack()
            with self._lock:
                self._lost += 1
            return
        self._report(bus, encode(Report("started", task.op, workflow=task.workflow, step=task.step, kind=task.kind,
                                        attempt=task.attempt, agent=self.agent_id)))
        body = self._execute(task)
        self._report(bus, body, dedup_id=f"result:{task.key}")
        if self.remember:
            self._done[task.key] = body
            if len(self._done) > self.remember:
                self._done.popitem(last=False)
        message.ack()

    def _execute(self, task: TaskMessage) -> bytes:
        """Run the task's action; the encoded result report (ok or error)."""
        def result(**fields: Any) -> bytes:
            return encode(Report("result", task.op, workflow=task.workflow, step=task.step, kind=task.kind,
                                 attempt=task.attempt, agent=self.agent_id, **fields))

        fn = self.actions.get(task.action)
        if fn is None:
            self._counter.add(failed=1)
            cause = f"agent {self.agent_id} has no action {task.action!r} (it has: {', '.join(sorted(self.actions))})"
            log.error("%s", cause)
            return result(error={"Error": ACTION_NOT_FOUND, "Cause": cause})
        self._counter.add(in_flight=1)
        try:
            output = fn(Task(task.op, task.workflow, task.step, task.kind, task.action, task.attempt, task.key,
                             task.input, task.original, task.output, task.error))
        except Exception as exc:  # noqa: BLE001 - every failure of an action is reported, none stops the agent
            self._counter.add(failed=1)
            permanent = isinstance(exc, PermanentError)
            log.info("%s %r of %s (attempt %d) failed%s: %s: %s", task.kind, task.action, task.op, task.attempt,
                     " for good" if permanent else "", type(exc).__name__, exc)
            return result(error={"Error": type(exc).__name__, "Cause": _cause(exc)}, permanent=permanent)
        finally:
            self._counter.add(in_flight=-1)
        try:
            body = result(ok=True, output=output)
        except (TypeError, msgspec.EncodeError) as exc:
            self._counter.add(failed=1)
            return result(error={"Error": RUNTIME, "Cause": f"the result of {task.action!r} is not JSON-serializable: "
                                 f"{exc}"}, permanent=True)
        self._counter.add(processed=1)
        return body

    def stats(self) -> AgentStats:
        base = self._counter.snapshot()
        with self._lock:
            return AgentStats(**base.__dict__, lost=self._lost, duplicates=self._duplicates)

    def __repr__(self) -> str:
        return f"<Agent {self.agent_id} on {self.url!r} {self.name!r}: {len(self.actions)} action(s)>"
