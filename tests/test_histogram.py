"""Histogram (native and twin): percentiles against numpy within the bucket precision, C == twin call for call."""

from __future__ import annotations

import ast
import importlib
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ringbus._core
from test_csrc import CC, build_and_run

CORE = Path(ringbus._core.__file__).parent
PERCENTILES = [0, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100]


def load(name: str) -> type:
    module = "ringbus._core._histogram" if name == "c" else "ringbus._core._histogram_py"
    try:
        return importlib.import_module(module).Histogram  # type: ignore[no-any-return]
    except ImportError as exc:  # pragma: no cover - only when the extension was not built
        pytest.skip(f"native core not built ({exc}); run `python setup.py build_ext --inplace`")


@pytest.fixture(params=["c", "py"])
def Histogram(request: pytest.FixtureRequest) -> type:
    return load(request.param)


def tolerance(value: int, bits: int) -> int:
    """How far a reported value may be from the true one: half its bucket (reported from the middle), plus 1."""
    return (value >> bits) // 2 + 1 if value >= (1 << bits) else 0


def true_percentile(values: list[int], p: float) -> int:
    """The smallest value with at least p% of the values <= it (numpy's inverted_cdf)."""
    return int(np.percentile(np.asarray(values, dtype=np.float64), p, method="inverted_cdf"))


latencies = st.lists(st.one_of(st.integers(0, 100), st.integers(0, 10**6), st.integers(0, 10**12)),
                     min_size=1, max_size=400)


@given(values=latencies, p=st.sampled_from(PERCENTILES))
def test_percentiles_match_numpy_within_the_bucket_precision(values: list[int], p: float) -> None:
    for name in ("c", "py"):
        h = load(name)()
        for v in values:
            h.record(v)
        got, want = h.percentile(p), true_percentile(values, p)
        # Reported from the middle of the bucket that holds the true value.
        assert abs(got - want) <= tolerance(want, h.precision_bits), (name, p, got, want)
        assert min(values) <= got <= max(values)


@given(values=st.lists(st.integers(0, 10**9), min_size=1, max_size=300), bits=st.integers(1, 9))
def test_every_precision_bounds_the_error(values: list[int], bits: int) -> None:
    h = load("c")(highest=1 << 40, precision_bits=bits)
    for v in values:
        h.record(v)
    for p in (50, 90, 99):
        want = true_percentile(values, p)
        assert abs(h.percentile(p) - want) <= tolerance(want, bits)


def test_large_sample_against_numpy(Histogram: type) -> None:
    rng = np.random.default_rng(20240601)
    values = rng.lognormal(mean=12.0, sigma=1.5, size=20_000).astype(np.int64)  # ~160 us median, long tail
    h = Histogram()
    for v in values.tolist():
        h.record(v)
    for p in (50, 90, 99, 99.9):
        want = np.percentile(values, p, method="inverted_cdf")
        assert abs(h.percentile(p) - want) <= want / 64 + 1, p  # half of a 1/32-wide bucket
    assert h.count == len(values) and h.sum == int(values.sum())
    assert h.min == int(values.min()) and h.max == int(values.max())
    assert math.isclose(h.mean, float(values.mean()), rel_tol=1e-9)


def test_empty_reports_zero(Histogram: type) -> None:
    h = Histogram()
    empty = (h.count, h.sum, h.min, h.max, h.mean, h.percentile(99), h.count_at_or_below(10**9))
    assert empty == (0, 0, 0, 0, 0.0, 0, 0)
    assert h.buckets() == []


def test_values_below_the_precision_are_exact(Histogram: type) -> None:
    h = Histogram(precision_bits=5)
    for v in range(32):
        h.record(v, count=2)
    assert [(lo, hi) for lo, hi, _ in h.buckets()] == [(v, v) for v in range(32)]
    assert h.percentile(50) == 15 and h.count == 64


def test_values_above_highest_share_the_top_bucket_and_max_stays_exact(Histogram: type) -> None:
    h = Histogram(highest=1 << 20)
    assert h.highest == 1 << 20
    h.record(5)
    h.record(3 << 30)
    h.record(2**64 - 1)
    assert h.max == 2**64 - 1 and h.percentile(100) == 2**64 - 1
    assert h.buckets()[-1][2] == 2 and h.buckets()[-1][1] == (1 << 20) - 1
    assert h.sum == 2**64 - 1  # saturates


def test_highest_is_rounded_up_to_a_power_of_two(Histogram: type) -> None:
    assert Histogram(highest=10**9).highest == 1 << 30
    assert Histogram(highest=2, precision_bits=3).highest == 1 << 4  # at least one power of two above the exact range


def test_count_at_or_below_counts_whole_buckets(Histogram: type) -> None:
    h = Histogram()
    for v in (100, 1000, 10_000, 100_000):
        h.record(v)
    assert [h.count_at_or_below(x) for x in (99, 100, 999, 5000, 10**6)] == [0, 1, 2, 2, 4]
    # 1000 and 999 share a bucket (992..1007): within the bucket, "<= 999" counts the 1000 too.


def test_record_seconds(Histogram: type) -> None:
    h = Histogram()
    h.record_seconds(0.000123)
    h.record_seconds(-0.5)  # a clock step: counted as 0
    h.record_seconds(float("nan"))
    h.record_seconds(1e30)
    assert h.count == 4 and h.min == 0 and h.max == 2**64 - 1
    assert abs(h.percentile(60) - 123_000) <= 123_000 // 64 + 1


def test_merge_equals_recording_everything(Histogram: type) -> None:
    a, b, both = Histogram(), Histogram(), Histogram()
    for i in range(1, 500):
        (a if i % 3 else b).record(i * 997)
        both.record(i * 997)
    a.merge(b)
    assert a.buckets() == both.buckets()
    assert (a.count, a.sum, a.min, a.max) == (both.count, both.sum, both.min, both.max)
    empty = Histogram()
    empty.merge(Histogram())
    assert empty.count == 0


def test_merge_refuses_other_layouts(Histogram: type) -> None:
    with pytest.raises(ValueError, match="different layouts"):
        Histogram().merge(Histogram(precision_bits=6))
    with pytest.raises(TypeError):
        Histogram().merge(object())


def test_copy_and_reset(Histogram: type) -> None:
    h = Histogram()
    for v in (1, 10, 100, 1000):
        h.record(v)
    c = h.copy()
    h.reset()
    assert h.count == 0 and h.percentile(50) == 0 and h.buckets() == []
    assert c.count == 4 and c.max == 1000
    h.record(42)
    assert h.buckets() == [(42, 42, 1)] and c.count == 4


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("3", TypeError),
                                        (2**64, OverflowError)])
def test_record_refuses_bad_values(Histogram: type, bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="value_ns"):
        Histogram().record(bad)


@pytest.mark.parametrize("kwargs", [{"precision_bits": 0}, {"precision_bits": 15}, {"precision_bits": 2.0},
                                    {"highest": 1}, {"highest": 2**63 + 1}, {"highest": 1e9}])
def test_constructor_refuses_bad_layouts(Histogram: type, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Histogram(**kwargs)


@pytest.mark.parametrize("p, error", [(-0.1, ValueError), (100.5, ValueError), (float("nan"), ValueError),
                                      ("50", TypeError), (None, TypeError)])
def test_percentile_refuses_bad_percentiles(Histogram: type, p: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="percentile"):
        Histogram().percentile(p)


class NativeMatchesTwin(RuleBasedStateMachine):
    """Any sequence of records, merges and resets: the native histogram and the twin report the same numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.py = load("c")(), load("py")()
        self.values: list[int] = []

    @rule(v=st.integers(0, 2**64 - 1), n=st.integers(1, 3))
    def record(self, v: int, n: int) -> None:
        self.c.record(v, n)
        self.py.record(v, n)
        self.values += [v] * n

    @rule(s=st.floats(-1.0, 1e5, allow_nan=False))
    def record_seconds(self, s: float) -> None:
        self.c.record_seconds(s)
        self.py.record_seconds(s)
        self.values.append(int(s * 1e9) if s > 0 else 0)

    @rule(vs=st.lists(st.integers(0, 10**7), max_size=5))
    def merge(self, vs: list[int]) -> None:
        oc, op = load("c")(), load("py")()
        for v in vs:
            oc.record(v)
            op.record(v)
        self.c.merge(oc)
        self.py.merge(op)
        self.values += vs

    @precondition(lambda self: self.values)
    @rule()
    def reset(self) -> None:
        self.c.reset()
        self.py.reset()
        self.values = []

    @invariant()
    def same_numbers(self) -> None:
        c, py = self.c, self.py
        assert (c.count, c.sum, c.min, c.max) == (py.count, py.sum, py.min, py.max)
        assert c.count == len(self.values)
        assert c.buckets() == py.buckets()
        for p in (0, 33.3, 50, 90, 99, 100):
            assert c.percentile(p) == py.percentile(p)
        for x in (0, 1000, 10**6, 2**50):
            assert c.count_at_or_below(x) == py.count_at_or_below(x)
        if self.values:
            assert c.max == max(self.values) and c.min == min(self.values)


TestNativeMatchesTwin = NativeMatchesTwin.TestCase


def test_stub_and_twin_have_the_native_api() -> None:
    tree = ast.parse((CORE / "_histogram.pyi").read_text())
    stub = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Histogram")
    stubbed = {f.name for f in stub.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")}
    native, twin = load("c"), load("py")
    for cls in (native, twin):
        assert {n for n in dir(cls) if not n.startswith("_")} == stubbed, cls
    for name in stubbed - {"count", "sum", "min", "max", "mean", "highest", "precision_bits"}:
        assert list(inspect.signature(getattr(twin, name)).parameters)[1:] == [
            a.arg for a in next(f for f in stub.body if isinstance(f, ast.FunctionDef) and f.name == name).args.args
        ][1:], name


@pytest.mark.skipif(CC is None, reason="needs a C compiler")
def test_c_header_under_sanitizers(tmp_path: Path) -> None:
    result = build_and_run(tmp_path, "test_histogram.c", "address")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "histogram: ok" in result.stdout
