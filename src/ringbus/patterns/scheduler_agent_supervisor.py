"""Scheduling agent supervisor: operations of ordered steps run by agents, every change in a durable store.

The implementation lives in :mod:`ringbus.patterns.workflow` (definition, asl, store, engine, scheduler,
agent, supervisor); this module is its public face::

    from ringbus.patterns.scheduler_agent_supervisor import Workflow, Step, Agent, WorkflowEngine

Guide: docs/patterns/scheduler-agent-supervisor.md. Logs go to ``ringbus.scheduler_agent_supervisor``.
"""

from ringbus.patterns.workflow.agent import Agent, AgentStats, PermanentError, Task
from ringbus.patterns.workflow.asl import from_asl
from ringbus.patterns.workflow.definition import (
    ALL,
    HEARTBEAT_TIMEOUT,
    TASK_FAILED,
    TIMEOUT,
    Catch,
    Retry,
    Step,
    Workflow,
    WorkflowDefinitionError,
    error_matches,
)
from ringbus.patterns.workflow.engine import WorkflowStats
from ringbus.patterns.workflow.orchestrator import WorkflowEngine
from ringbus.patterns.workflow.scheduler import Scheduler
from ringbus.patterns.workflow.store import Event, OperationState, SQLiteStateStore, StateStore, StepState
from ringbus.patterns.workflow.supervisor import Supervisor
from ringbus.patterns.workflow.wire import declare_queues, idempotency_key, submit, submit_many

__all__ = [
    # definitions
    "Workflow", "Step", "Retry", "Catch", "from_asl", "WorkflowDefinitionError", "error_matches",
    "ALL", "TASK_FAILED", "TIMEOUT", "HEARTBEAT_TIMEOUT",
    # running
    "WorkflowEngine", "Scheduler", "Supervisor", "Agent", "Task", "PermanentError", "submit", "submit_many",
    "declare_queues", "idempotency_key",
    # state
    "StateStore", "SQLiteStateStore", "OperationState", "StepState", "Event",
    # stats
    "WorkflowStats", "AgentStats",
]
