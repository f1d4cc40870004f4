"""The scheduler: starts operations and moves them on as the agents' reports arrive on ``<name>.results``.

Each report is applied to the operation in the state store in one transaction, then the task messages it
scheduled are sent, then the report is acked. A crash between any two of these loses nothing: a report not
acked comes again (and changes nothing the second time), a task stored as scheduled but not sent is sent by the
supervisor when it starts (with the same ``dedup_id``, so a task that did go out is not queued twice).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from ringbus.bus import Bus, check_seconds, connect
from ringbus.message import Message
from ringbus.patterns._lifecycle import BackgroundConsumer
from ringbus.patterns._stats import StatsCounter
from ringbus.patterns.workflow.definition import Workflow, as_workflows
from ringbus.patterns.workflow.engine import Engine, Outgoing, UnknownWorkflow, WorkflowStats, workflow_stats
from ringbus.patterns.workflow.store import StateStore, open_store
from ringbus.patterns.workflow.wire import check_engine_name, declare_queues, decode_report, results_queue, send_task

__all__ = ["Scheduler"]

log = logging.getLogger("ringbus.scheduler_agent_supervisor.scheduler")

Workflows = Workflow | Sequence[Workflow] | Mapping[str, Workflow]


class _Participant(BackgroundConsumer):
    """What the scheduler and the supervisor share: the workflows, the store, the engine, the queues."""

    def __init__(self, url: str, workflows: Workflows, handler: Callable[..., Any], *,
                 store: StateStore | str | None, data_dir: str | None, name: str, clock: Callable[[], float],
                 task_visibility: float) -> None:
        super().__init__(url, handler)
        self.workflows = as_workflows(workflows)
        self.name = check_engine_name(name)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, not {type(clock).__name__}")
        check_seconds("task_visibility", task_visibility, allow_zero=False)
        self.task_visibility = float(task_visibility)
        for wf in self.workflows.values():
            for step in wf.steps.values():
                if step.timeout >= self.task_visibility:
                    raise ValueError(f"workflow {wf.name!r} step {step.name!r}: timeout {step.timeout:g} s must be "
                                     f"below task_visibility ({self.task_visibility:g} s)")
        self._owns_store = not isinstance(store, StateStore)
        self.store = open_store(store, data_dir)
        self.engine = Engine(self.workflows, self.store, clock=clock, counter=StatsCounter())

    _log = log

    def _send(self, bus: Bus, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            send_task(bus, self.name, out.task, out.delay, out.dedup_id)

    def stats(self) -> WorkflowStats:
        return workflow_stats([self.engine], self.store)

    def close(self) -> None:
        """Stop, and close the state store if this object opened it."""
        try:
            self.stop()
        finally:
            if self._owns_store:
                self.store.close()


class Scheduler(_Participant):
    """Consume ``<name>.results``: start operations, record each step's progress, schedule what comes next.

    Parameters
    ----------
    url : str
        The bus.
    workflows : Workflow, sequence or mapping of Workflow
        The workflows it runs operations of.
    store : StateStore, str or None
        The state store, or a SQLite path; default ``<data_dir>/workflows.sqlite3``.
    data_dir : str or None
        Where the default store lives; default ``./ringbus-data``.
    name : str
        The engine's name: its queues are ``<name>.tasks`` and ``<name>.results``.
    clock : callable
        Wall-clock seconds (``time.time``): deadlines are stored and outlive the process.
    prefetch : int
        Reports taken ahead from the results queue.
    poll : float
        Seconds without reports before it looks at :meth:`stop`.
    task_visibility : float
        The tasks queue's visibility timeout (the same on every participant; above every step's timeout).
    """

    def __init__(self, url: str, workflows: Workflows, *, store: StateStore | str | None = None,
                 data_dir: str | None = None, name: str = "workflow", clock: Callable[[], float] = time.time,
                 prefetch: int = 32, poll: float = 0.25, task_visibility: float = 3600.0) -> None:
        super().__init__(url, workflows, self._handler, store=store, data_dir=data_dir, name=name, clock=clock,
                         task_visibility=task_visibility)
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        self.prefetch = prefetch
        self.poll = check_seconds("poll", poll, allow_zero=False)

    def _run(self, stop: threading.Event, ready: Callable[[], None]) -> None:
        bus = connect(self.url)
        try:
            declare_queues(bus, self.name, task_visibility=self.task_visibility)
            ready()
            results = results_queue(self.name)
            while not stop.is_set():
                for message in bus.consume(results, prefetch=self.prefetch, timeout=self.poll):
                    self._handler(bus, message)
                    if stop.is_set():
                        break
        finally:
            bus.close()

    def _handler(self, bus: Bus, message: Message) -> None:
        """Apply one report or start request, send what it schedules, ack it."""
        try:
            report = decode_report(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("message %s on %r is not a report (%s); dead-lettering it", message.id,
                      results_queue(self.name), exc)
            message.reject()
            return
        try:
            outgoing = self.engine.handle(report)
        except UnknownWorkflow as exc:
            log.error("report %r for operation %r dead-lettered: %s", report.type, report.op, exc)
            message.reject()
            return
        except Exception:  # noqa: BLE001 - a store that is busy or down: try the report again later
            log.exception("report %r for operation %r failed; it comes back in 1 s", report.type, report.op)
            message.nack(requeue=True, delay=1.0)
            return
        self._send(bus, outgoing)
        message.ack()

    def __repr__(self) -> str:
        return f"<Scheduler {self.name!r} on {self.url!r}, store {self.store!r}>"
