"""``ringbus bench`` as a product: run suites, show progress, print one table, write JSON or a chart.

A suite is one or more modules of :mod:`ringbus.bench` that only yield records; everything a reader
sees is made here. A suite module provides

- ``cases(scale: float = 1.0, seed: int = 0) -> list[Case]``: ringbus's contender and its peers on the
  same work (:class:`~ringbus.bench._harness.Case`); the harness runs them interleaved and turns each
  into :class:`~ringbus.bench._harness.Row` records, or
- ``results(scale: float, seed: int, rounds: int, progress: Callable[[str], None]) -> Iterable[Row]``:
  records it measured its own way (peer and ringbus in the same run, ``ratio`` = peer / ringbus);

and optionally ``missing_peers() -> list[str]``: one sentence per peer left out (library not importable,
server not answering) or per thing the run changed. :data:`SUITES` names the suites; a module listed
there that is not in the checkout leaves its suite out of the command's choices.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import platform
import sys
import textwrap
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol

from ringbus.bench._harness import Case, Row, run_case

__all__ = [
    "SUITES",
    "BenchRun",
    "Suite",
    "available_suites",
    "collect",
    "format_table",
    "make_progress",
    "plot",
    "run_cli",
    "to_json",
]

QUICK_SCALE = 0.01  # --quick: a hundredth of the work, one round (a smoke run, not a measurement)
JSON_SCHEMA = 1  # bumped when a field of the JSON document changes meaning


@dataclass(frozen=True)
class Suite:
    name: str
    modules: tuple[str, ...]  # each contributes its cases, in this order
    about: str  # what is compared, for --help


SUITES: dict[str, Suite] = {s.name: s for s in (
    Suite("core", ("ringbus.bench.core",), "Ring, PriorityQueue, ArrayRing vs deque, queue, heapq, numpy.copyto"),
    Suite("ipc", ("ringbus.bench.ipc",), "process to process vs multiprocessing, faster-fifo, raw pyzmq"),
    Suite("broker", ("ringbus.bench.broker",), "the embedded broker vs Redis Streams, RabbitMQ (pika), raw pyzmq"),
    Suite("patterns", ("ringbus.bench.patterns",), "competing consumers vs a Celery-style RabbitMQ pool; "
          "sequential convoy vs a plain pool"),
    Suite("leveling", ("ringbus.bench.leveling",), "load-leveling and priority consumers vs plain consumers"),
    Suite("pubsub", ("ringbus.bench.pubsub",), "fan-out vs Redis pub/sub and Redis Streams"),
    Suite("pipeline", ("ringbus.bench.pipeline",), "pipes and filters over ShmChannel vs multiprocessing.Queue"),
    Suite("backends", ("ringbus.bench.backends",), "the Bus on Redis, RabbitMQ, NATS vs their own clients"),
    Suite("aio", ("ringbus.bench.aio",), "the asyncio API vs the sync API"),
    Suite("metrics", ("ringbus.bench.metrics",), "metrics on vs off"),
)}


def available_suites() -> list[str]:
    """Suites whose modules are all in this checkout (found without importing them)."""
    return [name for name, suite in SUITES.items()
            if all(importlib.util.find_spec(module) is not None for module in suite.modules)]


def suites_help() -> str:
    return "\n".join(f"  {name:<9} {SUITES[name].about}" for name in available_suites())


# --- progress ----------------------------------------------------------------------------

class Progress(Protocol):
    def start(self, total: int) -> None: ...
    def case(self, suite: str, name: str) -> None: ...
    def update(self, text: str) -> None: ...
    def advance(self) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class _NoProgress:
    def start(self, total: int) -> None: pass
    def case(self, suite: str, name: str) -> None: pass
    def update(self, text: str) -> None: pass
    def advance(self) -> None: pass
    def note(self, text: str) -> None: pass
    def close(self) -> None: pass


class _PlainProgress:
    """One line per case and per round: readable in a CI log or a pipe."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.total = 0
        self.done = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, total: int) -> None:
        self.total = total

    def case(self, suite: str, name: str) -> None:
        self._print(f"[{self.done + 1}/{self.total}] {suite}: {name} ...")

    def update(self, text: str) -> None:
        self._print(f"    {text.rpartition(': ')[2]}")

    def advance(self) -> None:
        self.done += 1

    def note(self, text: str) -> None:
        self._print(f"note: {text}")

    def close(self) -> None:
        pass


class _RichProgress:
    """A bar over every case of the run and the current case's round, on a terminal.

    Redrawn only between rounds (no refresh thread): nothing of it runs while a contender is timed.
    """

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=stream)
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[detail]}"), console=self.console,
                            transient=True, auto_refresh=False)
        self.task: Any = None

    def start(self, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("bench", total=total, detail="")
        self.bar.refresh()

    def case(self, suite: str, name: str) -> None:
        self.bar.update(self.task, description=f"{suite}: {name}", detail="warm-up", refresh=True)

    def update(self, text: str) -> None:
        self.bar.update(self.task, detail=text.rpartition(": ")[2], refresh=True)

    def advance(self) -> None:
        self.bar.update(self.task, advance=1, refresh=True)

    def note(self, text: str) -> None:
        self.console.print(f"note: {text}", markup=False, highlight=False)

    def close(self) -> None:
        self.bar.stop()


def make_progress(mode: str = "auto", stream: IO[str] | None = None) -> Progress:
    """``rich`` (a live bar), ``plain`` (lines), ``none``; ``auto`` is rich on a terminal when it is installed."""
    stream = sys.stderr if stream is None else stream
    if mode == "auto":
        rich_here = importlib.util.find_spec("rich") is not None
        mode = "rich" if rich_here and stream.isatty() else "plain"
    if mode == "rich":
        return _RichProgress(stream)
    if mode == "plain":
        return _PlainProgress(stream)
    return _NoProgress()


# --- running -------------------------------------------------------------------------------

@dataclass
class BenchRun:
    """Everything one ``ringbus bench`` run measured and said."""

    suites: list[str]
    rounds: int
    scale: float
    seed: int
    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # a sentence per peer left out, known before running
    notes: list[str] = field(default_factory=list)  # sentences that came up while running (losses, settings)
    failures: list[str] = field(default_factory=list)  # a sentence per case that raised
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    seconds: float = 0.0


def _missing(module: Any) -> list[str]:
    missing = getattr(module, "missing_peers", None)
    return list(missing()) if missing is not None else []


def _add(sentences: list[str], more: Iterable[str], progress: Progress | None = None) -> None:
    for sentence in more:
        if sentence not in sentences:  # broker, patterns and pubsub share their Redis/RabbitMQ sentences
            sentences.append(sentence)
            if progress is not None:
                progress.note(sentence)


def _module_job(module: Any, run: BenchRun, progress: Callable[[str], None]) -> list[Row]:
    return list(module.results(scale=run.scale, seed=run.seed, rounds=run.rounds, progress=progress))


def _case_job(case: Case, run: BenchRun, progress: Callable[[str], None]) -> list[Row]:
    return run_case(case, run.rounds, progress)


Job = tuple[str, str, Callable[[Callable[[str], None]], list[Row]]]  # (suite, case label, run it with progress)


def _jobs(run: BenchRun, suite: str, module: Any) -> list[Job]:
    """One job per case of a suite module; a job takes the progress callback and returns the case's rows."""
    if hasattr(module, "results"):
        return [(suite, module.__name__.rpartition(".")[2], functools.partial(_module_job, module, run))]
    if hasattr(module, "cases"):
        return [(suite, case.name, functools.partial(_case_job, case, run))
                for case in module.cases(scale=run.scale, seed=run.seed)]
    raise TypeError(f"{module.__name__} is listed in ringbus.bench.report.SUITES but has neither cases() nor "
                    "results() (benchmarks/README.md, 'Adding a suite')")


def _fail(run: BenchRun, what: str, exc: Exception, progress: Progress, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    _add(run.failures, [f"{what} failed: {type(exc).__name__}: {exc}"], progress)


def collect(suites: Sequence[str], *, rounds: int = 5, scale: float = 1.0, seed: int = 12345,
            progress: Progress | None = None, debug: bool = False) -> BenchRun:
    """Run the named suites' comparisons. A suite module that cannot be set up, or a case that raises,
    becomes a failure sentence; the rest go on."""
    unknown = [name for name in suites if name not in SUITES]
    if unknown:
        raise ValueError(f"unknown bench suite(s) {', '.join(unknown)}: choose from {', '.join(SUITES)}")
    progress = progress or _NoProgress()
    run = BenchRun(list(suites), rounds, scale, seed)
    t0 = time.perf_counter()
    modules: list[Any] = []
    work: list[Job] = []
    for suite in suites:
        for name in SUITES[suite].modules:
            try:
                module = importlib.import_module(name)
                _add(run.skipped, _missing(module), progress)
                work += _jobs(run, suite, module)
            except Exception as exc:  # noqa: BLE001 - one half-finished suite must not stop `bench all`
                _fail(run, f"{suite}: setting up {name}", exc, progress, debug)
                continue
            modules.append(module)
    progress.start(len(work))
    try:
        for suite, label, job in work:
            progress.case(suite, label)
            try:
                rows = job(progress.update)
            except Exception as exc:  # noqa: BLE001 - one broken case (a server gone mid-run) must not lose the rest
                _fail(run, f"{suite}: {label}", exc, progress, debug)
                rows = []
            for row in rows:
                row.suite = row.suite or suite
            run.rows.extend(rows)
            progress.advance()
    finally:
        progress.close()
    _add(run.notes, (s for module in modules for s in _missing(module) if s not in run.skipped))
    run.seconds = time.perf_counter() - t0
    return run


# --- showing -------------------------------------------------------------------------------

def _implementation() -> str:
    import ringbus

    return str(ringbus.IMPLEMENTATION)


def header(run: BenchRun) -> str:
    import ringbus

    return (f"ringbus {ringbus.__version__} ({_implementation()} core), Python {platform.python_version()}, "
            f"{os.cpu_count()} CPU(s); bench {' '.join(run.suites)}: medians of {run.rounds} round(s), scale "
            f"{run.scale:g}; speed-up = peer / ringbus, measured side by side in this run (> 1: ringbus is faster)")


def format_table(rows: Sequence[Row]) -> str:
    """A plain-text table: one line per contender, ratios against ringbus on its case's first line.

    Speed-up is peer time / ringbus time (throughput cases) or peer pXX / ringbus pXX (latency cases,
    the percentile the case names): above 1 means ringbus is faster. A suite column appears when the
    rows come from more than one suite.
    """
    with_suite = len({row.suite for row in rows}) > 1
    header_cells = ("case", "contender", "ns/op", "GB/s", "p50 us", "p99 us", "ringbus speed-up", "target", "met")
    lines = [(("suite",) if with_suite else ()) + header_cells]
    for row in rows:
        met = {None: "", True: "yes", False: "NO"}[row.met]
        lines.append((
            *((row.suite,) if with_suite else ()),
            row.case,
            row.label,
            f"{row.ns_per_op:,.1f}",
            f"{row.bandwidth_gbs:.2f}" if row.bandwidth_gbs is not None else "",
            f"{row.p50_us:.1f}" if row.p50_us is not None else "",
            f"{row.p99_us:.1f}" if row.p99_us is not None else "",
            "(ringbus)" if row.ratio is None else f"{row.ratio:.2f}x",
            f">= {row.target:.3g}x" if row.target is not None else "",
            met,
        ))
    left = 3 if with_suite else 2  # text columns are left-aligned, figures right-aligned
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) if j < left else cell.rjust(w)
                             for j, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _record(row: Row) -> dict[str, Any]:
    latency = None
    if row.p50_us is not None:
        latency = {"p50": row.p50_us, "p90": row.p90_us, "p99": row.p99_us, "p99.9": row.p999_us}
    return {
        "suite": row.suite, "case": row.case, "contender": row.label, "unit": row.unit, "ours": row.ours,
        "n": row.n, "rounds": row.rounds, "ns_per_op": row.ns_per_op, "ops_per_s": row.ops_per_s,
        "bandwidth_gbs": row.bandwidth_gbs, "latency_us": latency, "compared": row.compared,
        "ratio": row.ratio, "target": row.target, "met": row.met,
    }


def to_json(run: BenchRun) -> dict[str, Any]:
    """The run as one JSON-able document (``ringbus bench --json``)."""
    import ringbus

    return {
        "schema": JSON_SCHEMA,
        "ringbus": ringbus.__version__,
        "implementation": _implementation(),
        "python": platform.python_version(),
        "machine": {"system": platform.system(), "release": platform.release(), "cpus": os.cpu_count(),
                    "processor": platform.machine()},
        "suites": run.suites,
        "rounds": run.rounds,
        "scale": run.scale,
        "seed": run.seed,
        "started": run.started,
        "seconds": round(run.seconds, 3),
        "results": [_record(row) for row in run.rows],
        "skipped": run.skipped,
        "notes": run.notes,
        "failures": run.failures,
    }


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


OURS_COLOUR, PEER_COLOUR = "#c0392b", "#7f8c8d"
PERCENTILES = (("p50", "p50_us", "#2e86c1"), ("p90", "p90_us", "#28b463"), ("p99", "p99_us", "#f39c12"),
               ("p99.9", "p999_us", "#8e44ad"))


def _cases(rows: Sequence[Row]) -> list[list[Row]]:
    """The rows grouped by case, in run order."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.suite, row.case), []).append(row)
    return list(groups.values())


def _throughput_axes(ax: Any, rows: list[Row]) -> None:
    from matplotlib.ticker import EngFormatter

    bandwidth = all(row.bandwidth_gbs is not None for row in rows)
    values = [float(row.bandwidth_gbs or 0.0) if bandwidth else row.ops_per_s for row in rows]
    y = range(len(rows))
    ax.barh(y, values, color=[OURS_COLOUR if row.ours else PEER_COLOUR for row in rows])
    for i, (row, value) in enumerate(zip(rows, values, strict=True)):
        text = "ringbus" if row.ours else f"ringbus speed-up {row.ratio:.2f}x"
        ax.text(value, i, f" {text}", va="center", fontsize=7)
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("GB/s (median)" if bandwidth else f"{rows[0].unit} per second (median)", fontsize=8)
    ax.set_xlim(0, max(values) * 1.45 if max(values) > 0 else 1)


def _latency_axes(ax: Any, rows: list[Row]) -> None:
    height = 0.8 / len(PERCENTILES)
    for k, (name, attr, colour) in enumerate(PERCENTILES):
        values = [getattr(row, attr) or 0.0 for row in rows]
        ax.barh([i + (k - 1.5) * height for i in range(len(rows))], values, height, color=colour, label=name)
    tops = [max(float(getattr(row, attr) or 0.0) for _, attr, _ in PERCENTILES) for row in rows]
    for i, (row, top) in enumerate(zip(rows, tops, strict=True)):
        ax.text(top, i, " ringbus" if row.ours else f" ringbus speed-up {row.ratio:.2f}x ({row.compared})",
                va="center", fontsize=7)
    largest = max(tops)
    ax.set_xscale("log")
    ax.set_xlim(right=largest * 30)  # room for the text on a log axis
    ax.set_xlabel(f"µs per {rows[0].unit} (log scale)", fontsize=8)
    ax.legend(fontsize=6, ncol=len(PERCENTILES), loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)


def plot(run: BenchRun, path: str | os.PathLike[str]) -> Path:
    """Save a chart: per case, throughput per contender (bars) or latency percentiles (grouped bars)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = _cases(run.rows)
    if not groups:
        raise ValueError("nothing was measured, so there is nothing to plot")
    columns = 1 if len(groups) < 4 else 2
    per_row = [max(len(g) for g in groups[i:i + columns]) for i in range(0, len(groups), columns)]
    heights = [1.2 + 0.45 * n for n in per_row]
    figure = Figure(figsize=(8 * columns, sum(heights) + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(len(per_row), columns, height_ratios=heights)
    for index, rows in enumerate(groups):
        ax = figure.add_subplot(grid[index // columns, index % columns])
        (_latency_axes if rows[0].p50_us is not None else _throughput_axes)(ax, rows)
        ax.set_yticks(range(len(rows)), [textwrap.shorten(row.label, 44) for row in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(textwrap.shorten(f"{rows[0].suite}: {rows[0].case}", 90), fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    figure.suptitle(textwrap.fill(header(run), 140), fontsize=8)
    out = Path(path)
    figure.savefig(out, dpi=100)
    return out


# --- the command ---------------------------------------------------------------------------

@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """While measuring for --json, whatever a suite or its child processes print goes to stderr, so stdout
    holds the one JSON document only."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedding host): Python-level prints only
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_cli(args: argparse.Namespace) -> int:
    """``ringbus bench``: 0 when every case ran, 1 when one failed (its sentence says why)."""
    if args.plot and not plot_available():
        raise ValueError("--plot needs matplotlib: pip install matplotlib (or 'ringbus[bench]')")
    rounds, scale = (1, QUICK_SCALE) if args.quick else (args.rounds, args.scale)
    suites = available_suites() if args.suite == "all" else [args.suite]
    progress = make_progress(args.progress)
    with _stdout_to_stderr() if args.json else contextlib.nullcontext():
        run = collect(suites, rounds=rounds, scale=scale, seed=args.seed, progress=progress,
                      debug=getattr(args, "debug", False))
    saved = plot(run, args.plot) if args.plot and run.rows else None
    if args.json:
        document = to_json(run)
        document["plot"] = str(saved) if saved else None
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        print(header(run))
        print(format_table(run.rows))
        for sentence in [*run.skipped, *run.notes, *run.failures]:
            print(f"note: {sentence}")
        if saved:
            print(f"plot saved to {saved}")
    if args.plot and not saved:
        print("ringbus: nothing was measured, so no plot was saved", file=sys.stderr)
    return 1 if run.failures else 0

