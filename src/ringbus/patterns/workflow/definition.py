"""Workflow definitions: steps with an action, a compensation, a timeout, retry rules and catch rules.

A :class:`Workflow` is a set of :class:`Step` objects joined by ``next`` (by default each step's next is the
one after it in the list) and ``catch`` edges, starting at ``start``. Error names follow Amazon States
Language: an action's exception class name (``"PaymentDeclined"``), ``States.Timeout`` (the step ran past its
timeout), ``States.HeartbeatTimeout`` (the agent running it died), and the wildcards ``States.ALL`` (any error)
and ``States.TaskFailed`` (any error but the two timeouts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ringbus.patterns._retry import RetryPolicy

__all__ = [
    "Retry",
    "Catch",
    "Step",
    "Workflow",
    "WorkflowDefinitionError",
    "error_matches",
    "ALL",
    "TASK_FAILED",
    "TIMEOUT",
    "HEARTBEAT_TIMEOUT",
    "RUNTIME",
    "as_workflows",
]

ALL = "States.ALL"
TASK_FAILED = "States.TaskFailed"
TIMEOUT = "States.Timeout"
HEARTBEAT_TIMEOUT = "States.HeartbeatTimeout"
RUNTIME = "States.Runtime"
_TIMEOUTS = frozenset((TIMEOUT, HEARTBEAT_TIMEOUT))


class WorkflowDefinitionError(ValueError):
    """A workflow (or Amazon States Language document) the engine cannot run; ``field`` says where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def error_matches(patterns: Iterable[str], error: str) -> bool:
    """True if the error name ``error`` is one of ``patterns`` (``States.ALL``, ``States.TaskFailed`` and
    ``States.Timeout`` match as in Amazon States Language)."""
    for pattern in patterns:
        if pattern == error or pattern == ALL:
            return True
        if pattern == TASK_FAILED and error not in _TIMEOUTS:
            return True
        if pattern == TIMEOUT and error == HEARTBEAT_TIMEOUT:
            return True
    return False


def _check_errors(where: str, errors: object) -> tuple[str, ...]:
    if isinstance(errors, str) or not isinstance(errors, (list, tuple)) or not errors:
        raise WorkflowDefinitionError(where, f"must be a non-empty list of error names, got {errors!r}")
    for name in errors:
        if not isinstance(name, str) or not name:
            raise WorkflowDefinitionError(where, f"error names must be non-empty strings, got {name!r}")
    if ALL in errors and len(errors) > 1:
        raise WorkflowDefinitionError(where, f"{ALL!r} must appear alone")
    return tuple(errors)


@dataclass(frozen=True)
class Retry:
    """Retry an attempt that failed with one of ``errors``, up to ``max_attempts`` attempts in all.

    The wait before the next attempt is ``backoff.delay(n)`` after the ``n``-th retry of this rule (exponential
    backoff; see :class:`ringbus.patterns.RetryPolicy`). An action that raises
    :class:`~ringbus.patterns.workflow.PermanentError` is never retried.
    """

    max_attempts: int = 3
    backoff: RetryPolicy = field(default_factory=RetryPolicy)
    errors: tuple[str, ...] = (ALL,)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not isinstance(self.backoff, RetryPolicy):
            raise TypeError(f"Retry.backoff must be a RetryPolicy, not {type(self.backoff).__name__}")
        object.__setattr__(self, "errors", _check_errors("Retry.errors", self.errors))


@dataclass(frozen=True)
class Catch:
    """When a step fails for good with one of ``errors``, go on at step ``next`` instead of compensating.

    The steps from ``next`` on are the operation's recovery path (Amazon States Language's ``Catch``): the
    automatic compensations do not run, and the operation ends ``compensated`` when the path reaches its end
    (``compensation_failed`` if a step on it fails for good). ``next`` receives ``{"Error": ..., "Cause": ...}``
    as its input.
    """

    errors: tuple[str, ...]
    next: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "errors", _check_errors("Catch.errors", self.errors))
        if not isinstance(self.next, str) or not self.next:
            raise ValueError(f"Catch.next must be a step name, got {self.next!r}")


def _rules(name: str, value: object) -> tuple[Retry, ...]:
    if isinstance(value, Retry):
        return (value,)
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) and all(isinstance(rule, Retry) for rule in value):
        rules = tuple(value)
        for rule in rules[:-1]:
            if ALL in rule.errors:
                raise ValueError(f"{name}: a rule for {ALL!r} must be the last one")
        return rules
    raise TypeError(f"{name} must be a Retry, a sequence of Retry or None, got {value!r}")


@dataclass(frozen=True)
class Step:
    """One step of a workflow.

    Parameters
    ----------
    name : str
        Unique in its workflow; also what the state store and the history call the step.
    action : str or None
        The name an agent looks up in its action registry; default ``name``.
    compensation : str or None
        The action that undoes this step, run (as a message, on an agent) when a later step fails for good.
    timeout : float
        Seconds an agent may run one attempt (counted from when it reports it started) before the supervisor
        gives the attempt up as ``States.Timeout`` and retries.
    retry : Retry, sequence of Retry, or None
        Retry rules for the action; the first whose errors match a failure applies. None: never retry.
    compensation_retry : Retry, sequence of Retry, or None
        Retry rules for the compensation (compensations should retry more, they have no fallback).
    catch : sequence of Catch
        Where to go when the action fails for good with a matching error (instead of compensating).
    next : str or None
        The step after this one; default the next one in the workflow's list (unless ``end``).
    end : bool
        The workflow ends after this step (the last step in the list ends by default).
    """

    name: str
    action: str | None = None
    compensation: str | None = None
    timeout: float = 60.0
    retry: Retry | Sequence[Retry] | None = field(default_factory=Retry)
    compensation_retry: Retry | Sequence[Retry] | None = field(default_factory=lambda: Retry(max_attempts=5))
    catch: Sequence[Catch] = ()
    next: str | None = None
    end: bool = False
    comment: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Step.name must be a non-empty str, got {self.name!r}")
        where = f"Step {self.name!r}"
        if self.action is None:
            object.__setattr__(self, "action", self.name)
        for attr in ("action", "compensation"):
            value = getattr(self, attr)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{where}: {attr} must be a non-empty str, got {value!r}")
        timeout = self.timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"{where}: timeout must be a number of seconds, not {type(timeout).__name__}")
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"{where}: timeout must be a finite number of seconds > 0, got {timeout!r}")
        object.__setattr__(self, "timeout", float(timeout))
        object.__setattr__(self, "retry", _rules(f"{where}: retry", self.retry))
        object.__setattr__(self, "compensation_retry", _rules(f"{where}: compensation_retry",
                                                               self.compensation_retry))
        catch = tuple(self.catch)
        for rule in catch:
            if not isinstance(rule, Catch):
                raise TypeError(f"{where}: catch must hold Catch objects, got {rule!r}")
        for rule in catch[:-1]:
            if ALL in rule.errors:
                raise ValueError(f"{where}: a catch for {ALL!r} must be the last one")
        object.__setattr__(self, "catch", catch)
        if self.next is not None and (not isinstance(self.next, str) or not self.next):
            raise ValueError(f"{where}: next must be a step name or None, got {self.next!r}")
        if self.next is not None and self.end:
            raise ValueError(f"{where}: give next or end=True, not both")

    @property
    def rules(self) -> tuple[Retry, ...]:
        return self.retry  # type: ignore[return-value] # normalized to a tuple by __post_init__

    @property
    def compensation_rules(self) -> tuple[Retry, ...]:
        return self.compensation_retry  # type: ignore[return-value] # normalized to a tuple by __post_init__


def find_cycle(start: str, edges: Mapping[str, Sequence[tuple[str, str]]]) -> list[tuple[str, str, str]] | None:
    """A cycle reachable from ``start`` as [(state, via, next), ...], or None. ``edges[s]`` = [(via, next)]."""
    done: set[str] = set()
    path: list[tuple[str, str, str]] = []
    on_path: dict[str, int] = {}

    def visit(node: str) -> list[tuple[str, str, str]] | None:
        on_path[node] = len(path)
        for via, target in edges.get(node, ()):
            path.append((node, via, target))
            if target in on_path:
                return path[on_path[target]:]
            if target not in done:
                found = visit(target)
                if found is not None:
                    return found
            path.pop()
        del on_path[node]
        done.add(node)
        return None

    return visit(start)


def reachable(start: str, edges: Mapping[str, Sequence[tuple[str, str]]]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for _, target in edges.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


class Workflow:
    """Named steps and how they follow each other; what a scheduler runs operations of.

    ``Workflow("order", [Step("pay", compensation="refund"), Step("reserve", compensation="release"),
    Step("ship")])`` runs pay -> reserve -> ship. Steps reached only through a :class:`Catch` come after the main
    path in the list; give the main path's last step ``end=True``.

    Raises
    ------
    WorkflowDefinitionError
        For duplicate names, a ``next`` or ``catch`` naming a missing step, a step not reachable from the
        start, or a cycle (no step may run twice in one operation).
    """

    def __init__(self, name: str, steps: Sequence[Step], *, start: str | None = None, comment: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Workflow name must be a non-empty str, got {name!r}")
        steps = tuple(steps)
        if not steps:
            raise WorkflowDefinitionError("steps", "a workflow needs at least one step")
        self.name = name
        self.comment = comment
        self.steps: dict[str, Step] = {}
        for i, step in enumerate(steps):
            if not isinstance(step, Step):
                raise TypeError(f"steps[{i}] must be a Step, not {type(step).__name__}")
            if step.name in self.steps:
                raise WorkflowDefinitionError(f"steps[{i}].name", f"{step.name!r} is used by another step")
            self.steps[step.name] = step
        self.start = steps[0].name if start is None else start
        if self.start not in self.steps:
            raise WorkflowDefinitionError("start", f"{self.start!r} is not a step")
        self._next: dict[str, str | None] = {}
        edges: dict[str, list[tuple[str, str]]] = {}
        for i, step in enumerate(steps):
            following = step.next
            if following is None and not step.end and i + 1 < len(steps):
                following = steps[i + 1].name
            if following is not None and following not in self.steps:
                raise WorkflowDefinitionError(f"steps[{i}].next", f"{following!r} is not a step")
            self._next[step.name] = following
            edges[step.name] = [("next", following)] if following else []
            for j, rule in enumerate(step.catch):
                if rule.next not in self.steps:
                    raise WorkflowDefinitionError(f"steps[{i}].catch[{j}].next", f"{rule.next!r} is not a step")
                edges[step.name].append((f"catch[{j}].next", rule.next))
        cycle = find_cycle(self.start, edges)
        if cycle is not None:
            node, via, target = cycle[-1]
            route = " -> ".join([c[0] for c in cycle] + [target])
            raise WorkflowDefinitionError(f"steps[{list(self.steps).index(node)}].{via}",
                                          f"{target!r} closes a cycle ({route}); a step runs at most once")
        unreachable = [n for n in self.steps if n not in reachable(self.start, edges)]
        if unreachable:
            raise WorkflowDefinitionError(f"steps[{list(self.steps).index(unreachable[0])}]",
                                          f"{unreachable[0]!r} is not reachable from the start {self.start!r}")

    def next_of(self, step: str) -> str | None:
        """The step after ``step`` on success, or None if the workflow ends there."""
        return self._next[step]

    def actions(self) -> set[str]:
        """Every action and compensation name an agent must know to run this workflow."""
        names = {step.action for step in self.steps.values() if step.action}
        names.update(step.compensation for step in self.steps.values() if step.compensation)
        return names

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {' -> '.join(self.steps)}>"


def as_workflows(workflows: Workflow | Sequence[Workflow] | Mapping[str, Workflow]) -> dict[str, Workflow]:
    """``{name: workflow}`` from one workflow, a sequence of them or a mapping by name."""
    if isinstance(workflows, Workflow):
        items = [workflows]
    elif isinstance(workflows, Mapping):
        items = list(workflows.values())
    elif isinstance(workflows, (list, tuple)):
        items = list(workflows)
    else:
        raise TypeError("workflows must be a Workflow, a sequence or a mapping of them, "
                        f"not {type(workflows).__name__}")
    out: dict[str, Workflow] = {}
    for wf in items:
        if not isinstance(wf, Workflow):
            raise TypeError(f"workflows must hold Workflow objects, got {type(wf).__name__}")
        if wf.name in out:
            raise ValueError(f"workflows: two workflows are named {wf.name!r}")
        out[wf.name] = wf
    if not out:
        raise ValueError("workflows: give at least one workflow")
    return out
