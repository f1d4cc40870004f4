"""Amazon States Language (the Task/Next/End/Retry/Catch subset) read into a :class:`Workflow`.

Each ``Task`` state becomes a :class:`Step`: ``Resource`` is the action name (the state's name when there is no
``Resource``, as in documents written for the console), ``Next``/``End`` the order, ``TimeoutSeconds`` the
timeout, ``Retry`` the retry rules (``MaxAttempts`` retries after the first attempt, ``IntervalSeconds`` times
``BackoffRate`` to the power of the retry, capped by ``MaxDelaySeconds``; ``JitterStrategy`` ``FULL`` or
``NONE``), ``Catch`` the catch rules. ASL has no compensations: pass them as ``compensations={state: action}``.
Anything else is a :class:`WorkflowDefinitionError` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns.workflow.definition import (
    ALL,
    Catch,
    Retry,
    Step,
    Workflow,
    WorkflowDefinitionError,
    find_cycle,
    reachable,
)

__all__ = ["from_asl"]

_TOP_FIELDS = ("StartAt", "States", "Comment", "Version")
_TASK_FIELDS = ("Type", "Resource", "Next", "End", "Retry", "Catch", "TimeoutSeconds", "Comment")
_RETRY_FIELDS = ("ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate", "MaxDelaySeconds", "JitterStrategy")
_CATCH_FIELDS = ("ErrorEquals", "Next")
_ASL_TYPES = ("Task", "Choice", "Parallel", "Map", "Wait", "Pass", "Succeed", "Fail")


def _fail(where: str, problem: str) -> WorkflowDefinitionError:
    return WorkflowDefinitionError(where, problem)


def _only(where: str, obj: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in obj:
        if key not in allowed:
            raise _fail(f"{where}.{key}" if where else key,
                        f"field not supported (supported: {', '.join(allowed)})")


def _number(where: str, value: Any, *, minimum: float, integer: bool = False, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _fail(where, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise _fail(where, f"must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return value


def _error_list(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(e, str) and e for e in value):
        raise _fail(where, f"must be a non-empty list of error names, got {value!r}")
    if ALL in value and len(value) > 1:
        raise _fail(where, f"{ALL!r} must appear alone")
    return tuple(value)


def _rules(where: str, value: Any, states: Mapping[str, Any] | None) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    if not isinstance(value, list):
        raise _fail(where, f"must be a list, got {type(value).__name__}")
    out = []
    for i, rule in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(rule, dict):
            raise _fail(at, f"must be an object, got {rule!r}")
        _only(at, rule, _CATCH_FIELDS if states is not None else _RETRY_FIELDS)
        if "ErrorEquals" not in rule:
            raise _fail(f"{at}.ErrorEquals", "is required")
        errors = _error_list(f"{at}.ErrorEquals", rule["ErrorEquals"])
        if ALL in errors and i != len(value) - 1:
            rule_kind = "catcher" if states is not None else "retrier"
            raise _fail(f"{at}.ErrorEquals", f"{ALL!r} must be in the last {rule_kind}")
        out.append((errors, rule))
    return out


def _retry(where: str, value: Any) -> tuple[Retry, ...]:
    retries = []
    for i, (errors, rule) in enumerate(_rules(where, value, None)):
        at = f"{where}[{i}]"
        interval = _number(f"{at}.IntervalSeconds", rule.get("IntervalSeconds", 1), minimum=0, strict=True)
        attempts = int(_number(f"{at}.MaxAttempts", rule.get("MaxAttempts", 3), minimum=0, integer=True))
        rate = _number(f"{at}.BackoffRate", rule.get("BackoffRate", 2.0), minimum=1.0)
        cap = _number(f"{at}.MaxDelaySeconds", rule.get("MaxDelaySeconds", 31_622_400), minimum=0, strict=True)
        jitter = rule.get("JitterStrategy", "NONE")
        if jitter not in ("FULL", "NONE"):
            raise _fail(f"{at}.JitterStrategy", f"must be 'FULL' or 'NONE', got {jitter!r}")
        backoff = RetryPolicy(base=float(interval), factor=float(rate), max_delay=float(cap), jitter=jitter == "FULL")
        retries.append(Retry(max_attempts=attempts + 1, backoff=backoff, errors=errors))
    return tuple(retries)


def _load(document: str | bytes | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(document, (str, bytes, bytearray)):
        try:
            document = json.loads(document)
        except ValueError as exc:
            raise _fail("document", f"is not valid JSON: {exc}") from None
    if not isinstance(document, Mapping):
        raise _fail("document", f"must be a JSON object, got {type(document).__name__}")
    return document


def from_asl(document: str | bytes | Mapping[str, Any], *, name: str = "workflow",
             compensations: Mapping[str, str] | None = None, default_timeout: float = 300.0,
             compensation_retry: Retry | None = None) -> Workflow:
    """Read an Amazon States Language state machine (the Task subset) into a :class:`Workflow`.

    Parameters
    ----------
    document : str, bytes or mapping
        The state machine as JSON text or as the parsed object.
    name : str
        The workflow's name (ASL documents have none).
    compensations : mapping of str to str, optional
        ``{state name: compensation action}``: what undoes each state when a later state fails for good and no
        ``Catch`` takes the error.
    default_timeout : float
        The timeout of states without ``TimeoutSeconds``.
    compensation_retry : Retry, optional
        Retry rule of every compensation; default ``Retry(max_attempts=5)``.

    Raises
    ------
    WorkflowDefinitionError
        Naming the field, for anything outside the subset: another state ``Type``
        (``States.Reserve.Type: 'Parallel' is not supported (supported: Task)``), an unknown field, a ``Next``
        to a missing state, a state not reachable from ``StartAt``, or a cycle.
    """
    doc = _load(document)
    _only("", doc, _TOP_FIELDS)
    start = doc.get("StartAt")
    if not isinstance(start, str) or not start:
        raise _fail("StartAt", f"is required and must be a state name, got {start!r}")
    states = doc.get("States")
    if not isinstance(states, dict) or not states:
        raise _fail("States", f"is required and must be a non-empty object of states, got {states!r}")
    if start not in states:
        raise _fail("StartAt", f"{start!r} is not a state (states: {', '.join(states)})")
    compensations = dict(compensations or {})
    for state in compensations:
        if state not in states:
            raise _fail(f"compensations[{state!r}]", f"is not a state (states: {', '.join(states)})")
    edges: dict[str, list[tuple[str, str]]] = {}
    parsed: dict[str, dict[str, Any]] = {}
    for state, body in states.items():
        at = f"States.{state}"
        if not isinstance(body, dict):
            raise _fail(at, f"must be an object, got {body!r}")
        kind = body.get("Type")
        if kind != "Task":
            if "Type" not in body:
                raise _fail(f"{at}.Type", "is required")
            problem = "is not supported" if kind in _ASL_TYPES else "is not a state type"
            raise _fail(f"{at}.Type", f"{kind!r} {problem} (supported: Task)")
        _only(at, body, _TASK_FIELDS)
        resource = body.get("Resource", state)
        if not isinstance(resource, str) or not resource:
            raise _fail(f"{at}.Resource", f"must be a non-empty string, got {resource!r}")
        has_next, end = "Next" in body, body.get("End", False)
        if end is not True and end is not False:
            raise _fail(f"{at}.End", f"must be true or false, got {end!r}")
        if has_next == end:
            raise _fail(at, "needs exactly one of Next or \"End\": true")
        targets = []
        if has_next:
            target = body["Next"]
            if not isinstance(target, str) or target not in states:
                raise _fail(f"{at}.Next", f"{target!r} is not a state (states: {', '.join(states)})")
            targets.append(("Next", target))
        catches = []
        for i, (errors, rule) in enumerate(_rules(f"{at}.Catch", body.get("Catch", []), states)):
            if "Next" not in rule:
                raise _fail(f"{at}.Catch[{i}].Next", "is required")
            target = rule["Next"]
            if not isinstance(target, str) or target not in states:
                raise _fail(f"{at}.Catch[{i}].Next", f"{target!r} is not a state (states: {', '.join(states)})")
            targets.append((f"Catch[{i}].Next", target))
            catches.append(Catch(errors=errors, next=target))
        timeout = _number(f"{at}.TimeoutSeconds", body.get("TimeoutSeconds", default_timeout), minimum=0,
                          strict=True)
        edges[state] = targets
        parsed[state] = {"action": resource, "next": body.get("Next"), "end": end, "catch": tuple(catches),
                         "retry": _retry(f"{at}.Retry", body.get("Retry", [])), "timeout": float(timeout),
                         "comment": body.get("Comment", "")}
    cycle = find_cycle(start, edges)
    if cycle is not None:
        state, via, target = cycle[-1]
        route = " -> ".join([c[0] for c in cycle] + [target])
        raise _fail(f"States.{state}.{via}", f"{target!r} closes a cycle ({route}); cycles are not supported "
                    "(the subset has no Choice state to leave one)")
    seen = reachable(start, edges)
    for state in states:
        if state not in seen:
            raise _fail(f"States.{state}", f"is not reachable from StartAt {start!r}")
    comp_retry = compensation_retry if compensation_retry is not None else Retry(max_attempts=5)
    # Main path first (StartAt, then along Next), then the states only a Catch leads to: Workflow's list order.
    order, state = [], start
    while state is not None and state not in order:
        order.append(state)
        state = parsed[state]["next"]
    order += [s for s in states if s not in order]
    steps = [Step(s, action=parsed[s]["action"], compensation=compensations.get(s), timeout=parsed[s]["timeout"],
                  retry=parsed[s]["retry"] or None, compensation_retry=comp_retry, catch=parsed[s]["catch"],
                  next=parsed[s]["next"], end=parsed[s]["end"], comment=parsed[s]["comment"]) for s in order]
    comment = doc.get("Comment", "")
    if not isinstance(comment, str):
        raise _fail("Comment", f"must be a string, got {comment!r}")
    return Workflow(name, steps, start=start, comment=comment)
