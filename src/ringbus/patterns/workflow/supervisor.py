"""The supervisor: sends again what a crash may have left unsent, and gives up attempts past their timeout.

When it starts it resends the task of every operation whose task is stored as scheduled (``dedup_id`` keeps a
task that did go out from being queued twice). Then, every ``interval`` seconds, each operation whose running
task passed its deadline (the step's timeout after the agent reported it started) gets a ``States.Timeout``
failure: retried as a new attempt with a new idempotency key, or failed for good (then compensated). An agent
that dies mid-step is found sooner, by the broker: its task comes back to the queue, and the next agent reports
it lost (``States.HeartbeatTimeout``) - see :mod:`ringbus.patterns.workflow.agent`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ringbus.bus import Bus, check_seconds, connect
from ringbus.patterns.workflow.engine import UnknownWorkflow
from ringbus.patterns.workflow.scheduler import Workflows, _Participant
from ringbus.patterns.workflow.store import StateStore
from ringbus.patterns.workflow.wire import Report, declare_queues

__all__ = ["Supervisor"]

log = logging.getLogger("ringbus.scheduler_agent_supervisor.supervisor")


class Supervisor(_Participant):
    """Watch the operations in the store: resend after a crash, time out attempts that run too long.

    Parameters are the :class:`~ringbus.patterns.workflow.Scheduler`'s (``url``, ``workflows``, ``store``,
    ``data_dir``, ``name``, ``clock``, ``task_visibility``), and:

    interval : float
        Seconds between two looks for attempts past their deadline.
    """

    def __init__(self, url: str, workflows: Workflows, *, store: StateStore | str | None = None,
                 data_dir: str | None = None, name: str = "workflow", clock: Callable[[], float] = time.time,
                 interval: float = 1.0, task_visibility: float = 3600.0) -> None:
        super().__init__(url, workflows, self.check, store=store, data_dir=data_dir, name=name, clock=clock,
                         task_visibility=task_visibility)
        self.interval = check_seconds("interval", interval, allow_zero=False)
        self.resent = 0

    def _run(self, stop: threading.Event, ready: Callable[[], None]) -> None:
        bus = connect(self.url)
        try:
            declare_queues(bus, self.name, task_visibility=self.task_visibility)
            self.recover(bus)
            ready()
            while not stop.wait(self.interval):
                self.check(bus)
        finally:
            bus.close()

    def recover(self, bus: Bus) -> int:
        """Send the task of every operation stored as scheduled; how many were sent."""
        sent = 0
        for op_id in self.store.scheduled():
            try:
                outgoing = self.engine.resend(op_id)
            except UnknownWorkflow as exc:
                log.error("operation %r cannot resume: %s", op_id, exc)
                continue
            self._send(bus, outgoing)
            sent += len(outgoing)
        if sent:
            log.info("resent %d scheduled task(s) of engine %r after a restart", sent, self.name)
        self.resent += sent
        return sent

    def check(self, bus: Bus) -> int:
        """Give up every running attempt past its deadline (now); how many were."""
        timed_out = 0
        for op_id in self.store.due(self.engine.clock()):
            op = self.store.load(op_id)
            if op is None or op.active is None or op.active.state != "running":
                continue
            active = op.active
            log.warning("operation %s: %s of step %r attempt %d ran past its deadline", op_id, active.kind,
                        active.step, active.attempt)
            try:
                outgoing = self.engine.handle(Report("timeout", op_id, workflow=op.workflow, step=active.step,
                                                     kind=active.kind, attempt=active.attempt))
            except UnknownWorkflow as exc:
                log.error("operation %r cannot be supervised: %s", op_id, exc)
                continue
            self._send(bus, outgoing)
            timed_out += 1
        return timed_out

    def __repr__(self) -> str:
        return f"<Supervisor {self.name!r} on {self.url!r}, store {self.store!r}>"
