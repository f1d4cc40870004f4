"""``ringbus bench broker`` at a tiny scale: every contender runs and returns a sane figure, no child outlives it."""

from __future__ import annotations

import multiprocessing

import pytest

from ringbus.bench import broker
from ringbus.bench._harness import run_case
from ringbus.cli import build_parser

N = 200  # messages (two batches of 100)
ROUND_TRIPS = 20


def _no_children_left() -> None:
    assert multiprocessing.active_children() == []


def test_cli_knows_the_suite() -> None:
    args = build_parser().parse_args(["bench", "broker", "--scale", "0.05", "--rounds", "1"])
    assert args.suite == "broker"


def test_cases_scale_down_and_name_their_targets() -> None:
    cases = broker.cases(scale=0.001)
    assert [case.n for case in cases] == [2 * broker.BATCH] * 4
    assert all(case.n % broker.BATCH == 0 for case in cases)
    for case in cases:  # a target names a contender of its case, or a peer left out with a note
        labels = {label for label, _ in case.peers}
        for label in case.target:
            assert label in labels or broker.missing_peers(), label
    assert cases[3].latency


def test_memory_contenders() -> None:
    for contender in (broker.memory_receive, broker.memory_consume, broker.queue_hand_off):
        assert 0.0 < contender(N) < 30.0


@pytest.mark.integration
def test_ringbus_contenders_across_processes() -> None:
    assert 0.0 < broker.ringbus_throughput(N) < 60.0
    assert 0.0 < broker.ringbus_single(N) < 60.0
    for contender in (broker.ringbus_request, broker.zmq_req_rep):
        samples = contender(ROUND_TRIPS)
        assert len(samples) == ROUND_TRIPS and all(0.0 < s < 30.0 for s in samples)
    _no_children_left()


@pytest.mark.service
def test_peer_contenders() -> None:
    ran = 0
    if broker.redis_missing() is None:
        assert 0.0 < broker.redis_throughput(N) < 60.0
        assert 0.0 < broker.redis_single(N) < 60.0
        ran += 1
    if broker.rabbit_missing() is None:
        assert 0.0 < broker.rabbit_throughput(N) < 60.0
        assert 0.0 < broker.rabbit_single(N) < 60.0
        assert len(broker.rabbit_rpc(ROUND_TRIPS)) == ROUND_TRIPS
        ran += 1
    _no_children_left()
    if not ran:
        pytest.skip("; ".join(broker.missing_peers()))


def test_a_failing_child_is_reported_and_reaped() -> None:
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        with broker._Children() as children:
            children.start("bad", _fails)
            children.release()
    _no_children_left()


def test_one_case_runs_through_the_harness() -> None:
    rows = run_case(broker.memory_case(N), rounds=1)
    assert [row.label for row in rows][0].startswith("memory://")
    assert rows[1].ratio is not None and rows[1].target == 10.0


def test_a_missing_library_leaves_its_rows_out_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker, "pika", None)
    monkeypatch.setattr(broker, "redis", None)
    broker.rabbit_missing.cache_clear()
    broker.redis_missing.cache_clear()
    try:
        case = broker.throughput_case(N)
        assert case.peers == []
        notes = broker.missing_peers()
        assert any("pika" in note for note in notes) and any("redis-py" in note for note in notes)
    finally:
        broker.rabbit_missing.cache_clear()
        broker.redis_missing.cache_clear()


def _fails(ready: object, stop: object) -> None:
    raise ZeroDivisionError("division by zero")
