"""Scheduling agent supervisor: workflows of steps run by agents, recorded in a state store, watched over.

See :mod:`ringbus.patterns.scheduler_agent_supervisor` (the same names) and
docs/patterns/scheduler_agent_supervisor.md.
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
