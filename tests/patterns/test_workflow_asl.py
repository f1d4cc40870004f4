"""Amazon States Language: the seed document's state machine parses and runs; Retry and Catch map onto the
engine; everything outside the Task/Next/End/Retry/Catch subset is an error naming the field."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from ringbus.patterns import RetryPolicy
from ringbus.patterns.scheduler_agent_supervisor import (
    ALL,
    HEARTBEAT_TIMEOUT,
    TASK_FAILED,
    TIMEOUT,
    Catch,
    OperationState,
    PermanentError,
    Retry,
    Task,
    WorkflowDefinitionError,
    error_matches,
    from_asl,
)

from .workflow_orders import running

pytestmark = pytest.mark.timeout(120)

# The seed document's "Example JSON for an order processing workflow", verbatim (the example loads it too).
SEED = (Path(__file__).resolve().parents[2] / "examples" / "order_workflow.asl.json").read_text()
SEED_STATES = ["Validate Payment", "Deduct Inventory", "Generate Invoice", "Ship Order"]


class OutOfStock(PermanentError):
    pass


class Recorder:
    """Actions named after the states; each call recorded as (operation, action, attempt)."""

    def __init__(self, fail: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.inputs: dict[tuple[str, str], Any] = {}
        self.lock = threading.Lock()
        self.fail = fail or {}  # action -> exception class raised when the order's input asks for it

    def action(self, name: str) -> Any:
        def run(task: Task) -> Any:
            with self.lock:
                self.calls.append((task.operation_id, name, task.attempt))
                self.inputs[(task.operation_id, name)] = task.input
            failing = task.original.get("fail", {}).get(name)
            if failing is not None and task.attempt <= failing[1]:
                raise self.fail[failing[0]](f"{name} failed on attempt {task.attempt}")
            return {"done": name, "order": task.original["order"]}
        return run

    def registry(self, names: list[str]) -> dict[str, Any]:
        return {n: self.action(n) for n in names}

    def of(self, op: str) -> list[str]:
        return [name for o, name, _ in self.calls if o == op]


def run_operations(url: str, tmp_path: Path, workflow: Any, recorder: Recorder, names: list[str],
                   inputs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, OperationState | None]]:
    """Run one operation per input on 3 agents; ({id: status}, {id: its state in the store})."""
    with running(url, tmp_path / "wf.sqlite3", workflow, recorder.registry(names), agents=3,
                 prefix="asl") as (engine, bus, _):
        ids = engine.submit_many(bus, inputs, operation_ids=[f"op-{i['order']}" for i in inputs])
        statuses = engine.wait(ids, timeout=60)
        return statuses, {i: engine.operation(i) for i in ids}


# -- the seed document --------------------------------------------------------------------------------------------
def test_seed_document_parses() -> None:
    wf = from_asl(SEED, name="order")
    assert list(wf.steps) == SEED_STATES and wf.start == "Validate Payment"
    assert [wf.next_of(s) for s in SEED_STATES] == SEED_STATES[1:] + [None]
    assert [wf.steps[s].action for s in SEED_STATES] == SEED_STATES  # no Resource: the state's name
    assert all(wf.steps[s].rules == () and wf.steps[s].compensation is None for s in SEED_STATES)
    assert from_asl(json.loads(SEED)).steps.keys() == wf.steps.keys()  # the parsed object works too


def test_seed_document_runs(url: str, tmp_path: Path) -> None:
    recorder = Recorder()
    wf = from_asl(SEED, name="order")
    statuses, ops = run_operations(url, tmp_path, wf, recorder, SEED_STATES, [{"order": i} for i in range(20)])
    assert set(statuses.values()) == {"completed"} and len(statuses) == 20
    for op in statuses:
        assert recorder.of(op) == SEED_STATES  # each state once, in the document's order
        # ASL data flow: a state's input is the previous state's output.
        assert recorder.inputs[(op, "Deduct Inventory")] == {"done": "Validate Payment", "order": int(op[3:])}
    assert ops["op-3"].output == {"done": "Ship Order", "order": 3}  # type: ignore[union-attr]


def test_seed_document_with_compensations(url: str, tmp_path: Path) -> None:
    """ASL has no compensations; given beside the document, they undo the completed states in reverse."""
    recorder = Recorder({"OutOfStock": OutOfStock})
    wf = from_asl(SEED, name="order", compensations={"Validate Payment": "Refund Payment",
                                                     "Deduct Inventory": "Restock"})
    names = SEED_STATES + ["Refund Payment", "Restock"]
    inputs = [{"order": 1}, {"order": 2, "fail": {"Deduct Inventory": ["OutOfStock", 1]}},
              {"order": 3, "fail": {"Ship Order": ["OutOfStock", 1]}}]
    statuses, _ = run_operations(url, tmp_path, wf, recorder, names, inputs)
    assert statuses == {"op-1": "completed", "op-2": "compensated", "op-3": "compensated"}
    assert recorder.of("op-2") == ["Validate Payment", "Deduct Inventory", "Refund Payment"]
    # Generate Invoice has no compensation: nothing to undo there; the rest in reverse order.
    assert recorder.of("op-3") == SEED_STATES + ["Restock", "Refund Payment"]


# -- Retry and Catch ----------------------------------------------------------------------------------------------
RETRY_CATCH = {
    "Comment": "order with retries and a recovery path",
    "StartAt": "Pay",
    "States": {
        "Pay": {"Type": "Task", "Resource": "pay", "Next": "Reserve", "TimeoutSeconds": 30,
                "Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 3.0}]},
        "Reserve": {"Type": "Task", "Resource": "reserve", "Next": "Ship",
                    "Retry": [{"ErrorEquals": ["Flaky"], "IntervalSeconds": 1, "MaxAttempts": 3,
                               "BackoffRate": 2.0, "MaxDelaySeconds": 3, "JitterStrategy": "FULL"},
                              {"ErrorEquals": ["States.ALL"], "IntervalSeconds": 5, "MaxAttempts": 0}],
                    "Catch": [{"ErrorEquals": ["OutOfStock"], "Next": "Refund"}]},
        "Ship": {"Type": "Task", "Resource": "ship", "End": True},
        "Refund": {"Type": "Task", "Resource": "refund", "Next": "Notify", "Comment": "recovery path"},
        "Notify": {"Type": "Task", "Resource": "notify", "End": True},
    },
}


def test_retry_and_catch_are_mapped() -> None:
    wf = from_asl(RETRY_CATCH, name="order", default_timeout=120)
    assert list(wf.steps) == ["Pay", "Reserve", "Ship", "Refund", "Notify"]  # main path first
    pay, reserve = wf.steps["Pay"], wf.steps["Reserve"]
    assert (pay.action, pay.timeout, wf.steps["Ship"].timeout) == ("pay", 30.0, 120.0)
    # MaxAttempts counts retries; Retry.max_attempts counts attempts.
    assert pay.rules == (Retry(max_attempts=3, errors=("Flaky",),
                               backoff=RetryPolicy(base=1.0, factor=3.0, max_delay=31_622_400.0, jitter=False)),)
    assert [pay.rules[0].backoff.delay(n) for n in (1, 2)] == [1.0, 3.0]
    flaky, rest = reserve.rules
    assert (flaky.max_attempts, flaky.backoff.max_delay, flaky.backoff.jitter) == (4, 3.0, True)
    assert (rest.errors, rest.max_attempts) == ((ALL,), 1)
    assert reserve.catch == (Catch(errors=("OutOfStock",), next="Refund"),)
    assert wf.next_of("Reserve") == "Ship" and wf.next_of("Ship") is None and wf.next_of("Refund") == "Notify"
    assert wf.comment == "order with retries and a recovery path" and wf.steps["Refund"].comment == "recovery path"


def test_catch_runs_the_recovery_path(url: str, tmp_path: Path) -> None:
    class Flaky(Exception):
        pass

    doc = copy.deepcopy(RETRY_CATCH)
    for state in doc["States"].values():  # test speed: millisecond backoff
        for rule in state.get("Retry", []):
            rule.update(IntervalSeconds=0.001, MaxDelaySeconds=0.01)
    wf = from_asl(doc, name="order", compensations={"Pay": "unpay"})
    recorder = Recorder({"OutOfStock": OutOfStock, "Flaky": Flaky, "KeyError": KeyError})
    names = ["pay", "reserve", "ship", "refund", "notify", "unpay"]
    inputs = [{"order": 1, "fail": {"pay": ["Flaky", 2]}},  # 2 retries allowed: completes on attempt 3
              {"order": 2, "fail": {"reserve": ["OutOfStock", 9]}},  # caught: the recovery path runs
              {"order": 3, "fail": {"reserve": ["KeyError", 9]}},  # not caught, no retry: compensated
              {"order": 4, "fail": {"pay": ["Flaky", 9]}}]  # retries run out on the first step: nothing to undo
    statuses, ops = run_operations(url, tmp_path, wf, recorder, names, inputs)
    assert statuses == {"op-1": "completed", "op-2": "compensated", "op-3": "compensated",
                        "op-4": "compensated"}
    assert [(n, a) for o, n, a in recorder.calls if o == "op-1"] == [("pay", 1), ("pay", 2), ("pay", 3),
                                                                     ("reserve", 1), ("ship", 1)]
    assert recorder.of("op-2") == ["pay", "reserve", "refund", "notify"]  # no automatic unpay
    assert recorder.inputs[("op-2", "refund")] == {"Error": "OutOfStock",
                                                  "Cause": "reserve failed on attempt 1"}
    op2 = ops["op-2"]
    assert op2 is not None and op2.caught and op2.error["Error"] == "OutOfStock"  # type: ignore[index]
    assert {n: s.status for n, s in op2.steps.items()} == {"Pay": "completed", "Reserve": "failed",
                                                           "Refund": "completed", "Notify": "completed"}
    assert recorder.of("op-3") == ["pay", "reserve", "unpay"]
    assert recorder.of("op-4") == ["pay", "pay", "pay"]


@pytest.mark.parametrize("patterns, error, matched", [
    ([ALL], "Anything", True),
    ([ALL], TIMEOUT, True),
    ([TASK_FAILED], "KeyError", True),
    ([TASK_FAILED], TIMEOUT, False),
    ([TASK_FAILED], HEARTBEAT_TIMEOUT, False),
    ([TIMEOUT], HEARTBEAT_TIMEOUT, True),
    ([HEARTBEAT_TIMEOUT], TIMEOUT, False),
    (["KeyError", "Flaky"], "Flaky", True),
    (["KeyError"], "ValueError", False),
])
def test_error_names_match_as_in_asl(patterns: list[str], error: str, matched: bool) -> None:
    assert error_matches(patterns, error) is matched


# -- outside the subset: an error naming the field -----------------------------------------------------------------
def seed_with(change: Any) -> dict[str, Any]:
    doc = json.loads(SEED)
    change(doc)
    return doc


def state(name: str, **fields: Any) -> Any:
    return lambda doc: doc["States"][name].update(fields)


@pytest.mark.parametrize("change, message", [
    (state("Deduct Inventory", Type="Parallel"),
     "States.Deduct Inventory.Type: 'Parallel' is not supported (supported: Task)"),
    (state("Validate Payment", Type="Choice"), "States.Validate Payment.Type: 'Choice' is not supported"),
    (state("Generate Invoice", Type="Map"), "States.Generate Invoice.Type: 'Map' is not supported"),
    (state("Generate Invoice", Type="Wait"), "States.Generate Invoice.Type: 'Wait' is not supported"),
    (state("Generate Invoice", Type="Pass"), "States.Generate Invoice.Type: 'Pass' is not supported"),
    (state("Ship Order", Type="Succeed"), "States.Ship Order.Type: 'Succeed' is not supported"),
    (state("Ship Order", Type="Fail"), "States.Ship Order.Type: 'Fail' is not supported"),
    (state("Ship Order", Type="Teleport"), "States.Ship Order.Type: 'Teleport' is not a state type"),
    (lambda doc: doc["States"]["Ship Order"].pop("Type"), "States.Ship Order.Type: is required"),
    (state("Validate Payment", Parameters={"a.$": "$.b"}), "States.Validate Payment.Parameters: field not supported"),
    (state("Validate Payment", ResultPath="$.x"), "States.Validate Payment.ResultPath: field not supported"),
    (state("Validate Payment", HeartbeatSeconds=5), "States.Validate Payment.HeartbeatSeconds: field not supported"),
    (state("Validate Payment", Next="Nowhere"), "States.Validate Payment.Next: 'Nowhere' is not a state"),
    (state("Ship Order", Next="Validate Payment"), "States.Ship Order: needs exactly one of Next or \"End\": true"),
    (lambda doc: doc["States"]["Ship Order"].pop("End"), "States.Ship Order: needs exactly one of Next"),
    (state("Ship Order", End="yes"), "States.Ship Order.End: must be true or false"),
    (lambda doc: (doc["States"]["Ship Order"].pop("End"), doc["States"]["Ship Order"].update(Next="Deduct Inventory")),
     "States.Ship Order.Next: 'Deduct Inventory' closes a cycle (Deduct Inventory -> Generate Invoice -> Ship Order "
     "-> Deduct Inventory)"),
    (state("Validate Payment", Catch=[{"ErrorEquals": ["X"], "Next": "Validate Payment"}]),
     "States.Validate Payment.Catch[0].Next: 'Validate Payment' closes a cycle"),
    (state("Validate Payment", Catch=[{"ErrorEquals": ["X"], "Next": "Gone"}]),
     "States.Validate Payment.Catch[0].Next: 'Gone' is not a state"),
    (state("Validate Payment", Catch=[{"ErrorEquals": ["X"]}]), "States.Validate Payment.Catch[0].Next: is required"),
    (state("Validate Payment", Catch=[{"ErrorEquals": ["X"], "Next": "Ship Order", "ResultPath": "$.e"}]),
     "States.Validate Payment.Catch[0].ResultPath: field not supported (supported: ErrorEquals, Next)"),
    (state("Validate Payment", Retry=[{"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["X"]}]),
     "States.Validate Payment.Retry[0].ErrorEquals: 'States.ALL' must be in the last retrier"),
    (state("Validate Payment", Retry=[{"ErrorEquals": ["States.ALL", "X"]}]),
     "States.Validate Payment.Retry[0].ErrorEquals: 'States.ALL' must appear alone"),
    (state("Validate Payment", Retry=[{"ErrorEquals": []}]),
     "States.Validate Payment.Retry[0].ErrorEquals: must be a non-empty list"),
    (state("Validate Payment", Retry=[{"IntervalSeconds": 1}]),
     "States.Validate Payment.Retry[0].ErrorEquals: is required"),
    (state("Validate Payment", Retry=[{"ErrorEquals": ["X"], "Interval": 1}]),
     "States.Validate Payment.Retry[0].Interval: field not supported"),
    (state("Validate Payment", Retry=[{"ErrorEquals": ["X"], "BackoffRate": 0.5}]),
     "States.Validate Payment.Retry[0].BackoffRate: must be >= 1"),
    (state("Validate Payment", Retry=[{"ErrorEquals": ["X"], "MaxAttempts": -1}]),
     "States.Validate Payment.Retry[0].MaxAttempts: must be >= 0"),
    (state("Validate Payment", Retry=[{"ErrorEquals": ["X"], "MaxAttempts": 1.5}]),
     "States.Validate Payment.Retry[0].MaxAttempts: must be an integer"),
    (state("Validate Payment", Retry=[{"ErrorEquals": ["X"], "JitterStrategy": "HALF"}]),
     "States.Validate Payment.Retry[0].JitterStrategy: must be 'FULL' or 'NONE'"),
    (state("Validate Payment", Retry={"ErrorEquals": ["X"]}), "States.Validate Payment.Retry: must be a list"),
    (state("Validate Payment", TimeoutSeconds=0), "States.Validate Payment.TimeoutSeconds: must be > 0"),
    (state("Validate Payment", Resource=""), "States.Validate Payment.Resource: must be a non-empty string"),
    (lambda doc: doc["States"].update(Orphan={"Type": "Task", "End": True}),
     "States.Orphan: is not reachable from StartAt 'Validate Payment'"),
    (lambda doc: doc.update(StartAt="Begin"), "StartAt: 'Begin' is not a state"),
    (lambda doc: doc.pop("StartAt"), "StartAt: is required"),
    (lambda doc: doc.update(States={}), "States: is required and must be a non-empty object"),
    (lambda doc: doc.update(TimeoutSeconds=60), "TimeoutSeconds: field not supported (supported: StartAt, States, "
     "Comment, Version)"),
    (lambda doc: doc.update(QueryLanguage="JSONata"), "QueryLanguage: field not supported"),
])
def test_outside_the_subset_is_a_named_error(change: Any, message: str) -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        from_asl(seed_with(change))
    assert message in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError) and str(info.value).startswith(info.value.field + ": ")


@pytest.mark.parametrize("document, message", [
    ("{not json", "document: is not valid JSON"),
    ("[1, 2]", "document: must be a JSON object"),
    (b'{"StartAt": "A", "States": {"A": "Task"}}', "States.A: must be an object"),
])
def test_unreadable_documents(document: Any, message: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=None) as info:
        from_asl(document)
    assert message in str(info.value)


def test_compensations_must_name_states() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"compensations\['Refund'\]: is not a state"):
        from_asl(SEED, compensations={"Refund": "refund"})
