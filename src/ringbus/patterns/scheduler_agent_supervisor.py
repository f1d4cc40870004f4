"""Scheduling agent supervisor: operations of ordered steps run by agents, every change in a durable store.

The implementation lives in :mod:`ringbus.patterns.workflow` (definition, asl, store, engine, scheduler,
agent, supervisor); this module is its public face::

    from ringbus.patterns.scheduler_agent_supervisor import Workflow, Step, Agent, WorkflowEngine

Guide: docs/patterns/scheduler_agent_supervisor.md. Logs go to ``ringbus.scheduler_agent_supervisor``.
"""

from ringbus.patterns.workflow import *  # noqa: F403 - the re-export is the point
from ringbus.patterns.workflow import __all__  # noqa: F401
