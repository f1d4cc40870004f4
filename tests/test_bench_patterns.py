"""``ringbus.bench.patterns`` at a tiny scale: the cases name their targets, every contender returns a sane figure."""

from __future__ import annotations

import multiprocessing

import pytest

from ringbus.bench import patterns

N = 400  # messages: one prefetch window per worker


def test_cases_scale_down_and_name_their_targets() -> None:
    cases = patterns.cases(scale=0.0001, seed=1)
    pool_case = cases[0]
    assert pool_case.n == patterns.WORKERS * patterns.PREFETCH
    assert patterns.RABBIT_POOL in pool_case.target
    assert {label for label, _ in pool_case.peers} <= {patterns.RABBIT_POOL}
    try:
        from ringbus.bench import convoy
    except ImportError:
        assert len(cases) == 1
    else:
        assert [c.name for c in cases[1:]] == [c.name for c in convoy.cases(0.0001, 1)]


@pytest.mark.integration
def test_ringbus_pool_contender() -> None:
    assert 0.0 < patterns.ringbus_pool(N) < 60.0
    assert multiprocessing.active_children() == []


@pytest.mark.service
def test_rabbit_pool_contender() -> None:
    if patterns.missing_peers():
        pytest.skip(patterns.missing_peers()[0])
    assert 0.0 < patterns.rabbit_pool(N) < 60.0
    assert multiprocessing.active_children() == []
