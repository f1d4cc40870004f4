"""The messaging patterns, each a short module written only against :class:`ringbus.Bus`.

So each runs unchanged on ``memory://``, the embedded broker and the other
backends. The main class of every pattern is importable from here; a module
is imported only when one of its names is first used (a pattern's optional
dependencies - boto3, starlette - cost nothing until then).

=============================  ==================================================================
pattern                        module and main names
=============================  ==================================================================
messaging                      ``messaging``: Producer, Consumer
competing consumers            ``competing_consumers``: WorkerPool (+ ``idempotency`` dedup stores)
queue-based load leveling      ``load_leveling``: LevelledConsumer, TokenBucket, LevelledProducer
priority queue                 ``priority``: PrioritySender, PriorityConsumer, WeightedConsumer
sequential convoy              ``convoy``: SequentialConvoy
publisher-subscriber           ``pubsub``: Publisher, Subscriber
choreography                   ``choreography``: Service, Event, EventLog
claim check                    ``claim_check``: ClaimCheck, LocalStore, RedisStore, S3Store
pipes and filters              ``pipeline``: Pipeline, Stage, BusPipeline
scheduling agent supervisor    ``scheduler_agent_supervisor``: Workflow, Step, WorkflowEngine, Agent, from_asl
asynchronous request-reply     ``async_request_reply``: JobManager, JobWorker (HTTP app in ``ringbus.http``)
=============================  ==================================================================

Shared pieces: :class:`RetryPolicy` (backoff with jitter) and :class:`PatternStats` (what every pattern's
``stats()`` returns, or extends).
"""

from __future__ import annotations

import importlib
from typing import Any

from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter

_LAZY = {
    "Producer": "messaging",
    "Consumer": "messaging",
    "WorkerPool": "competing_consumers",
    "Reject": "competing_consumers",
    "MemoryDedupStore": "idempotency",
    "SQLiteDedupStore": "idempotency",
    "idempotent": "idempotency",
    "LevelledConsumer": "load_leveling",
    "LevelledProducer": "load_leveling",
    "TokenBucket": "load_leveling",
    "PrioritySender": "priority",
    "PriorityConsumer": "priority",
    "WeightedConsumer": "priority",
    "SequentialConvoy": "convoy",
    "Publisher": "pubsub",
    "Subscriber": "pubsub",
    "Service": "choreography",
    "Event": "choreography",
    "EventLog": "choreography",
    "ClaimCheck": "claim_check",
    "LocalStore": "claim_check",
    "RedisStore": "claim_check",
    "S3Store": "claim_check",
    "Pipeline": "pipeline",
    "Stage": "pipeline",
    "BusPipeline": "pipeline",
    "Workflow": "scheduler_agent_supervisor",
    "Step": "scheduler_agent_supervisor",
    "WorkflowEngine": "scheduler_agent_supervisor",
    "Agent": "scheduler_agent_supervisor",
    "from_asl": "scheduler_agent_supervisor",
    "JobManager": "async_request_reply",
    "JobWorker": "async_request_reply",
}

__all__ = ["RetryPolicy", "PatternStats", "StatsCounter", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ringbus.patterns' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ringbus.patterns.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
