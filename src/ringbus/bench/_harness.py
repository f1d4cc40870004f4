"""Side-by-side timing: contenders of one case run interleaved, round after round; medians and ratios."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# A contender is a function that runs `n` operations and returns the seconds
# they took (it times itself, so set-up stays out of the figure), or, for a
# latency case, the list of each operation's seconds.
Contender = Callable[[int], "float | list[float]"]


@dataclass
class Case:
    """One comparison: ringbus's contender first, then its peers on the same work."""

    name: str
    unit: str  # what one operation is, e.g. "put+get"
    n: int  # operations per round
    ours: tuple[str, Contender]
    peers: Sequence[tuple[str, Contender]]
    target: dict[str, float] = field(default_factory=dict)  # peer label -> ratio the issue asks for
    bytes_per_op: int = 0  # > 0: also report bandwidth
    latency: bool = False  # contenders return per-operation samples
    latency_stat: float = 99  # the percentile a latency case's ratio compares


@dataclass
class Row:
    """One contender's figure in one case: the record every suite yields (``ringbus.bench.report`` shows it).

    A case's ringbus row has ``ratio=None``; each peer row carries peer / ringbus from the same run.
    """

    case: str
    label: str
    unit: str
    ns_per_op: float  # median time of one operation; the p50 for a latency case
    ratio: float | None  # peer time / ours: > 1 means ringbus is faster
    target: float | None
    bandwidth_gbs: float | None
    p50_us: float | None = None
    p99_us: float | None = None
    p90_us: float | None = None
    p999_us: float | None = None
    suite: str = ""  # filled in by the report when a suite's module does not
    n: int = 0  # operations per round
    rounds: int = 0
    compared: str = "median"  # what the ratio compares: "median" time, or a latency percentile ("p99")

    @property
    def ours(self) -> bool:
        return self.ratio is None

    @property
    def met(self) -> bool | None:
        """Whether this run met the issue's target ratio (None: no target on this row)."""
        if self.ratio is None or self.target is None:
            return None
        return self.ratio >= self.target

    @property
    def ops_per_s(self) -> float:
        return 1e9 / self.ns_per_op if self.ns_per_op > 0 else 0.0


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def run_case(case: Case, rounds: int, progress: Callable[[str], None] | None = None) -> list[Row]:
    if case.latency:
        return _run_latency_case(case, rounds, progress)
    contenders = [case.ours, *case.peers]
    times: dict[str, list[float]] = {label: [] for label, _ in contenders}
    for fn in (fn for _, fn in contenders):  # warm-up: caches, lazy imports, allocator
        fn(max(1, case.n // 10))
    for r in range(rounds):
        # rotate the order so no contender always runs right after another's garbage
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for label, fn in order:
            gc.collect()
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                times[label].append(float(fn(case.n)))  # type: ignore[arg-type]  # throughput: seconds, a float
            finally:
                if was_enabled:
                    gc.enable()
        if progress:
            progress(f"{case.name}: round {r + 1}/{rounds}")
    ours_label = case.ours[0]
    ours_median = statistics.median(times[ours_label])
    rows = []
    for label, _ in contenders:
        median = statistics.median(times[label])
        rows.append(
            Row(
                case=case.name,
                label=label,
                unit=case.unit,
                ns_per_op=median / case.n * 1e9,
                ratio=None if label == ours_label else median / ours_median,
                target=case.target.get(label),
                bandwidth_gbs=(case.bytes_per_op * case.n / median / 1e9) if case.bytes_per_op else None,
                n=case.n,
                rounds=rounds,
            )
        )
    return rows


def _run_latency_case(case: Case, rounds: int, progress: Callable[[str], None] | None) -> list[Row]:
    """Pool every round's samples per contender; report p50/p99, compare the case's percentile."""
    contenders = [case.ours, *case.peers]
    samples: dict[str, list[float]] = {label: [] for label, _ in contenders}
    for r in range(rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for label, fn in order:
            result = fn(case.n)
            assert isinstance(result, list), f"latency contender {label} must return samples"
            samples[label].extend(result)
        if progress:
            progress(f"{case.name}: round {r + 1}/{rounds}")
    ours_stat = percentile(samples[case.ours[0]], case.latency_stat)
    rows = []
    for label, _ in contenders:
        p50, p90, p99, p999 = (percentile(samples[label], q) for q in (50, 90, 99, 99.9))
        rows.append(
            Row(
                case=case.name,
                label=label,
                unit=case.unit,
                ns_per_op=p50 * 1e9,
                ratio=None if label == case.ours[0] else percentile(samples[label], case.latency_stat) / ours_stat,
                target=case.target.get(label),
                bandwidth_gbs=None,
                p50_us=p50 * 1e6,
                p99_us=p99 * 1e6,
                p90_us=p90 * 1e6,
                p999_us=p999 * 1e6,
                n=case.n,
                rounds=rounds,
                compared=f"p{case.latency_stat:g}",
            )
        )
    return rows


def timed(body: Callable[[], None]) -> float:
    start = time.perf_counter()
    body()
    return time.perf_counter() - start
