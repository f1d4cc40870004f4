"""A scheduler and a supervisor over one state store, started and stopped together: what most programs run."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from ringbus.bus import Bus
from ringbus.patterns.workflow.engine import WorkflowStats, workflow_stats
from ringbus.patterns.workflow.scheduler import Scheduler, Workflows
from ringbus.patterns.workflow.store import FINISHED, Event, OperationState, StateStore, open_store
from ringbus.patterns.workflow.supervisor import Supervisor
from ringbus.patterns.workflow.wire import submit, submit_many

__all__ = ["WorkflowEngine"]


class WorkflowEngine:
    """Run operations of ``workflows``: :class:`Scheduler` thread(s) and a :class:`Supervisor` in this process.

    Agents run elsewhere (other threads, other processes, other machines on the same broker). Parameters are
    those of :class:`Scheduler` and :class:`Supervisor`: ``store`` is a :class:`StateStore` or a SQLite path
    (default ``<data_dir>/workflows.sqlite3``, ``data_dir`` default ``./ringbus-data``), ``check_interval`` the
    supervisor's ``interval``; ``schedulers`` scheduler threads share the results queue (each waits for the
    broker's confirm of every task it sends, so several overlap those waits; the store's compare-and-set keeps
    two of them from applying reports of one operation at the same time).
    """

    def __init__(self, url: str, workflows: Workflows, *, name: str = "workflow",
                 store: StateStore | str | os.PathLike[str] | None = None,
                 data_dir: str | os.PathLike[str] | None = None,
                 clock: Callable[[], float] = time.time, check_interval: float = 1.0, schedulers: int = 1,
                 prefetch: int = 32, poll: float = 0.25, task_visibility: float = 3600.0) -> None:
        if isinstance(schedulers, bool) or not isinstance(schedulers, int) or schedulers < 1:
            raise ValueError(f"schedulers must be an int >= 1, got {schedulers!r}")
        self._owns_store = not isinstance(store, StateStore)
        self.store = open_store(store, data_dir)
        try:
            self.schedulers = [Scheduler(url, workflows, store=self.store, name=name, clock=clock, prefetch=prefetch,
                                         poll=poll, task_visibility=task_visibility) for _ in range(schedulers)]
            self.supervisor = Supervisor(url, workflows, store=self.store, name=name, clock=clock,
                                         interval=check_interval, task_visibility=task_visibility)
        except BaseException:
            if self._owns_store:
                self.store.close()
            raise
        self.url, self.name, self.workflows = url, name, self.supervisor.workflows

    @property
    def scheduler(self) -> Scheduler:
        """The first scheduler."""
        return self.schedulers[0]

    def start(self, timeout: float = 30.0) -> WorkflowEngine:
        """Start the supervisor (which first resends what a crash left scheduled), then the scheduler(s)."""
        self.supervisor.start(timeout)
        try:
            for scheduler in self.schedulers:
                scheduler.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop them all (operations stay in the store and resume at the next start); close a store it opened.
        Raises the error that stopped a scheduler or the supervisor, if one did."""
        runners = [*self.schedulers, self.supervisor]
        for runner in runners:
            runner._stop.set()  # all wind down at once; the joins below wait for each
        stopped, error = True, None
        for runner in runners:
            try:
                stopped = runner.stop(timeout) and stopped
            except BaseException as exc:  # noqa: BLE001 - raised below, once everything is stopped
                error = error or exc
        if self._owns_store:
            self.store.close()
        if error is not None:
            raise error
        return stopped

    def __enter__(self) -> WorkflowEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- operations ---------------------------------------------------------------------------------------------
    def submit(self, bus: Bus, input: Any = None, *, workflow: str | None = None,
               operation_id: str | None = None) -> str:
        """Start an operation (through ``bus``, a bus of the calling thread); its id. ``workflow`` may be left
        out when the engine has one."""
        return submit(bus, self._workflow(workflow), input, name=self.name, operation_id=operation_id)

    def submit_many(self, bus: Bus, inputs: Iterable[Any], *, workflow: str | None = None,
                    operation_ids: Iterable[str] | None = None) -> list[str]:
        """Start several operations in one round trip; their ids."""
        return submit_many(bus, self._workflow(workflow), inputs, name=self.name, operation_ids=operation_ids)

    def _workflow(self, workflow: str | None) -> str:
        if workflow is None:
            if len(self.workflows) != 1:
                raise ValueError(f"workflow: name one of {', '.join(self.workflows)}")
            return next(iter(self.workflows))
        if workflow not in self.workflows:
            raise ValueError(f"workflow {workflow!r} is not one of this engine's ({', '.join(self.workflows)})")
        return workflow

    def operation(self, operation_id: str) -> OperationState | None:
        return self.store.load(operation_id)

    def history(self, operation_id: str) -> list[Event]:
        return self.store.history(operation_id)

    def wait(self, operation_ids: Iterable[str], timeout: float = 60.0, poll: float = 0.05) -> dict[str, str]:
        """Wait until every operation finished; ``{id: status}``. Raises TimeoutError naming the unfinished."""
        ids = list(operation_ids)
        deadline = time.monotonic() + timeout
        statuses: dict[str, str] = {}
        for op_id in ids:  # one look per poll at the first unfinished one, then on through those that finished
            while True:
                op = self.store.load(op_id)
                if op is not None and op.status in FINISHED:
                    statuses[op_id] = op.status
                    break
                if time.monotonic() >= deadline:
                    left = [i for i in ids if i not in statuses]
                    raise TimeoutError(f"{len(left)} operation(s) not finished within {timeout:g} s: {left[:5]}")
                time.sleep(poll)
        return statuses

    def stats(self) -> WorkflowStats:
        return workflow_stats([*(s.engine for s in self.schedulers), self.supervisor.engine], self.store)

    def __repr__(self) -> str:
        return f"<WorkflowEngine {self.name!r} on {self.url!r}: {', '.join(self.workflows)}; {self.store!r}>"
