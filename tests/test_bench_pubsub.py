"""The pub-sub benchmark suite at a tiny scale: every contender runs and returns a sane figure, no child outlives it."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from ringbus.bench import broker, pubsub

N = 200  # events


def test_cases_scale_down_and_name_their_targets() -> None:
    cases = pubsub.cases(scale=0.001)
    assert [case.n for case in cases] == [2 * pubsub.BATCH] * 2
    for case in cases:  # a target names a contender of its case, or a peer left out with a note
        labels = {label for label, _ in case.peers}
        for label in case.target:
            assert label in labels or pubsub.missing_peers(), label
    assert cases[0].target == {pubsub.REDIS_PUBSUB: 2.0} and cases[1].target == {pubsub.REDIS_STREAMS: 1.0}


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_ringbus_contenders_across_processes() -> None:
    assert 0.0 < pubsub.ringbus_ephemeral(N) < 60.0
    assert 0.0 < pubsub.ringbus_durable(N) < 60.0
    assert multiprocessing.active_children() == []
    assert not any("ephemeral subscriber" in note for note in pubsub.missing_peers())  # nothing dropped


@pytest.mark.service
@pytest.mark.timeout(300)
def test_redis_contenders() -> None:
    reason = broker.redis_missing()
    if reason is not None:
        if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"RINGBUS_REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    assert 0.0 < pubsub.redis_pubsub(N) < 60.0
    assert 0.0 < pubsub.redis_streams(N) < 60.0
    assert multiprocessing.active_children() == []
