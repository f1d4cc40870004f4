"""Side-by-side timing: contenders of one case run interleaved, round after round; medians and ratios."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

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
    peers: list[tuple[str, Contender]]
    target: dict[str, float] = field(default_factory=dict)  # peer label -> ratio the issue asks for
    bytes_per_op: int = 0  # > 0: also report bandwidth
    latency: bool = False  # contenders return per-operation samples
    latency_stat: float = 99  # the percentile a latency case's ratio compares


@dataclass
class Row:
    case: str
    label: str
    unit: str
    ns_per_op: float
    ratio: float | None  # peer time / ours: > 1 means ringbus is faster
    target: float | None
    bandwidth_gbs: float | None
    p50_us: float | None = None
    p99_us: float | None = None


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
                times[label].append(float(fn(case.n)))  # type: ignore[arg-type]
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
        p50, p99 = percentile(samples[label], 50), percentile(samples[label], 99)
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
            )
        )
    return rows


def timed(body: Callable[[], None]) -> float:
    start = time.perf_counter()
    body()
    return time.perf_counter() - start


def format_table(rows: list[Row]) -> str:
    """A plain-text table: one line per contender, ratios against ringbus on its case's first line.

    Speed-up is peer time / ringbus time (throughput cases) or peer p99 /
    ringbus p99 (latency cases): above 1 means ringbus is faster.
    """
    header = ("case", "contender", "ns/op", "GB/s", "p50 us", "p99 us", "ringbus speed-up", "target", "met")
    lines = [header]
    for row in rows:
        met = ""
        if row.ratio is not None and row.target is not None:
            met = "yes" if row.ratio >= row.target else "NO"
        lines.append(
            (
                row.case,
                row.label,
                f"{row.ns_per_op:,.1f}",
                f"{row.bandwidth_gbs:.2f}" if row.bandwidth_gbs is not None else "",
                f"{row.p50_us:.1f}" if row.p50_us is not None else "",
                f"{row.p99_us:.1f}" if row.p99_us is not None else "",
                "(ringbus)" if row.ratio is None else f"{row.ratio:.2f}x",
                f">= {row.target:g}x" if row.target is not None else "",
                met,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(line, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
