"""The modules behind :mod:`ringbus.patterns.scheduler_agent_supervisor` (import the public names from there).

definition (steps, workflows, retry and catch rules), asl (Amazon States Language), store (state store),
wire (messages and queues), engine (how an operation moves), scheduler, agent, supervisor, orchestrator
(WorkflowEngine: a scheduler and a supervisor together).
"""
