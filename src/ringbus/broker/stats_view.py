"""How ``ringbus stats`` prints a broker's queues: counts, then latency percentiles (docs/observability.md).

A rich table on a terminal when rich is installed; plain aligned columns otherwise, so a pipe gets text a
script can split (``--json`` is the form for machines).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = ["print_queues", "queue_rows", "latency_rows"]

QUEUE_COLUMNS = ("depth", "in_flight", "consumers", "sent", "delivered", "acked", "nacked", "dead_lettered",
                 "send_rate", "ack_rate")
LATENCY_COLUMNS = ("count", "p50", "p90", "p99", "max")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ms(value: object) -> str:
    return f"{value:,.3f}" if isinstance(value, (int, float)) else "-"


def queue_rows(queues: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per queue: its name and QUEUE_COLUMNS."""
    return [[name, *(_cell(q.get(c)) for c in QUEUE_COLUMNS)] for name, q in sorted(queues.items())]


def latency_rows(queues: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per queue and stage that measured something in the last window: queue, stage, count, ms."""
    rows = []
    for name, q in sorted(queues.items()):
        for stage, summary in (q.get("latency_ms") or {}).items():
            if summary.get("count"):
                rows.append([name, stage, f"{summary['count']:,}", *(_ms(summary.get(c)) for c in LATENCY_COLUMNS[1:])])
    return rows


def _plain(title: str, header: Sequence[str], rows: list[list[str]], out: TextIO, text_columns: int) -> None:
    print(title, file=out)
    widths = [max(len(row[i]) for row in [list(header), *rows]) for i in range(len(header))]
    for row in [list(header), *rows]:
        print("  ".join(cell.ljust(widths[i]) if i < text_columns else cell.rjust(widths[i])
                        for i, cell in enumerate(row)), file=out)


def _rich(title: str, header: Sequence[str], rows: list[list[str]], out: TextIO, text_columns: int) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)  # narrow: 11 columns
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < text_columns else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    Console(file=out).print(table)


def print_queues(queues: Mapping[str, Mapping[str, Any]], *, out: TextIO | None = None,
                 use_rich: bool | None = None) -> None:
    """Print the queue table and, where the broker keeps them, the latency table (ms, last 30-60 s).

    ``use_rich``: None picks rich when it is installed and ``out`` is a terminal.
    """
    out = out if out is not None else sys.stdout
    if use_rich is None:
        try:
            import rich  # noqa: F401
        except ImportError:
            use_rich = False
        else:
            use_rich = out.isatty()
    latency = latency_rows(queues)
    tables = [("queues", ["queue", *QUEUE_COLUMNS], queue_rows(queues), 1)]
    if latency:
        tables.append(("latency (ms, last 30-60 s)", ["queue", "stage", *LATENCY_COLUMNS], latency, 2))
    elif queues and all(q.get("latency_ms") is None for q in queues.values()):
        tables.append(("latency: not measured (broker started with --no-metrics)", [], [], 0))
    elif queues:
        tables.append(("latency: no deliveries or settles in the last 30-60 s", [], [], 0))
    for title, header, rows, text_columns in tables:
        if not header:
            print(title, file=out)
        elif use_rich:
            _rich(title, header, rows, out, text_columns)
        else:
            _plain(title, header, rows, out, text_columns)
