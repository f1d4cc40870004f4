"""What travels on the bus between the scheduler, the agents and the supervisor, and the queues it travels on.

Two queues per engine ``name``: ``<name>.tasks`` (the scheduler's and supervisor's task messages, one per
attempt of an action or a compensation, taken by agents) and ``<name>.results`` (the agents' reports - started,
finished, lost - and the clients' requests to start an operation, taken by the scheduler). Bodies are JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from ringbus.bus import Bus, check_name
from ringbus.message import Message, new_id
from ringbus.patterns._handling import send_deduplicated

__all__ = ["TaskMessage", "Report", "declare_queues", "send_task", "tasks_queue", "results_queue", "submit",
           "submit_many", "idempotency_key"]

# A dead agent's task comes back (attempts + 1) and the next agent reports it lost; it must never dead-letter.
TASK_MAX_ATTEMPTS = 1_000_000
RESULT_MAX_ATTEMPTS = 100  # a report the scheduler cannot handle this often goes to <name>.results.dlq
START_PRIORITY, REPORT_PRIORITY = 0, 1  # reports first: operations under way finish before new ones start


class TaskMessage(msgspec.Struct, omit_defaults=True):
    """One attempt of an action (``kind="action"``) or a compensation (``kind="compensate"``)."""

    op: str
    workflow: str
    step: str
    kind: str
    action: str
    attempt: int
    key: str  # idempotency key: operation, step (and "compensate"), attempt
    input: Any = None
    original: Any = None  # the operation's input
    output: Any = None  # compensations: what the step returned
    error: Any = None  # a Catch's target: the error it caught


class Report(msgspec.Struct, omit_defaults=True):
    """From an agent: ``started``, ``result`` (ok or error) or ``lost``; from a client: ``start``; from the
    supervisor, handled in place: ``timeout``."""

    type: str
    op: str
    workflow: str = ""
    step: str = ""
    kind: str = ""
    attempt: int = 0
    ok: bool = False
    output: Any = None
    error: Any = None  # {"Error": name, "Cause": text}
    permanent: bool = False
    agent: str = ""
    input: Any = None  # start


_task_decoder = msgspec.json.Decoder(TaskMessage)
_report_decoder = msgspec.json.Decoder(Report)
encode = msgspec.json.encode


def decode_task(body: bytes | bytearray | memoryview) -> TaskMessage:
    return _task_decoder.decode(body)


def decode_report(body: bytes | bytearray | memoryview) -> Report:
    return _report_decoder.decode(body)


def idempotency_key(op: str, step: str, kind: str, attempt: int) -> str:
    """``"<operation>:<step>:<attempt>"`` for actions, ``"<operation>:<step>:compensate:<attempt>"`` for
    compensations: the same for every delivery of one attempt, different for each attempt."""
    return f"{op}:{step}:{attempt}" if kind == "action" else f"{op}:{step}:compensate:{attempt}"


def tasks_queue(name: str) -> str:
    return f"{name}.tasks"


def results_queue(name: str) -> str:
    return f"{name}.results"


def check_engine_name(name: object) -> str:
    check_name("workflow engine", name)
    assert isinstance(name, str)
    if len(name) > 190:
        raise ValueError(f"name must be at most 190 characters (its queues add '.results'), got {len(name)}")
    return name


def declare_queues(bus: Bus, name: str, *, task_visibility: float | None = 3600.0) -> None:
    """Declare ``<name>.results`` and, unless ``task_visibility`` is None, ``<name>.tasks`` (durable).

    Every participant declares them with the same options (the broker refuses different ones).
    ``task_visibility`` must exceed the longest step timeout: an agent keeps its task unsettled while it runs.
    """
    bus.declare_queue(results_queue(name), durable=True, max_attempts=RESULT_MAX_ATTEMPTS)
    if task_visibility is not None:
        bus.declare_queue(tasks_queue(name), durable=True, max_attempts=TASK_MAX_ATTEMPTS,
                          visibility_timeout=task_visibility)


def send_task(bus: Bus, name: str, task: TaskMessage, delay: float, dedup_id: str) -> None:
    """Put one task message on ``<name>.tasks`` (after ``delay`` seconds); repeats within the queue's dedup
    window are dropped by ``dedup_id``."""
    send_deduplicated(bus, tasks_queue(name), Message(encode(task), key=task.op), dedup_id,
                      delay=delay if delay > 0 else None)


def _start(workflow: str, input: Any, operation_id: str | None) -> tuple[str, Message]:
    if not isinstance(workflow, str) or not workflow:
        raise ValueError(f"workflow must be a workflow's name, got {workflow!r}")
    op = operation_id if operation_id is not None else new_id()
    if not isinstance(op, str) or not op:
        raise ValueError(f"operation_id must be a non-empty str or None, got {operation_id!r}")
    try:
        body = encode(Report("start", op, workflow=workflow, input=input))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"input must be JSON-serializable: {exc}") from None
    return op, Message(body, key=op, priority=START_PRIORITY)


def submit(bus: Bus, workflow: str, input: Any = None, *, name: str = "workflow",
           operation_id: str | None = None) -> str:
    """Ask the scheduler of engine ``name`` to start an operation of ``workflow``; return its id.

    Works from any process with a bus on the same broker. Starting the same ``operation_id`` twice starts it
    once (the scheduler ignores a start for an id it knows; the send carries ``dedup_id``).
    """
    check_engine_name(name)
    op, message = _start(workflow, input, operation_id)
    declare_queues(bus, name, task_visibility=None)
    send_deduplicated(bus, results_queue(name), message, f"start:{op}")
    return op


def submit_many(bus: Bus, workflow: str, inputs: Iterable[Any], *, name: str = "workflow",
                operation_ids: Iterable[str] | None = None) -> list[str]:
    """:func:`submit` for several inputs in one round trip (without ``dedup_id``: give fresh ids)."""
    check_engine_name(name)
    inputs = list(inputs)
    ids: list[str | None] = list(operation_ids) if operation_ids is not None else [None] * len(inputs)
    if len(ids) != len(inputs):
        raise ValueError(f"operation_ids has {len(ids)} ids for {len(inputs)} inputs")
    started = [_start(workflow, value, op) for value, op in zip(inputs, ids, strict=True)]
    declare_queues(bus, name, task_visibility=None)
    bus.send_many(results_queue(name), [message for _, message in started])
    return [op for op, _ in started]
