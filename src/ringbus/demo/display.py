"""How the demo shows itself: live progress and the summary table, with rich when it is installed, plain lines
otherwise (and whenever standard output is not a terminal)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = ["Progress", "Display", "make_display", "rich_available"]


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Progress:
    """One look at the run, for the progress display."""

    elapsed: float
    total: int
    placed: int
    receipts: int
    completed: int
    compensated: int
    waiting_intake: int  # orders waiting in shop.orders (the priority queue)
    waiting_steps: int  # workflow tasks waiting for an agent
    messages: int  # through the broker so far


class Display:
    """Plain lines: a progress line about once a second, then the summary as an aligned table."""

    def __init__(self, out: TextIO = sys.stdout, *, quiet: bool = False, interval: float = 1.0) -> None:
        self.out = out
        self.quiet = quiet
        self.interval = interval
        self._last = -float("inf")

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def note(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def update(self, p: Progress, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.quiet or (not force and now - self._last < self.interval):
            return
        self._last = now
        print(f"[{p.elapsed:5.1f}s] placed {p.placed}/{p.total}  finished {p.completed + p.compensated} "
              f"(completed {p.completed}, compensated {p.compensated})  in flight "
              f"{p.placed - p.completed - p.compensated}  waiting: intake {p.waiting_intake}, steps "
              f"{p.waiting_steps}  broker {p.messages:,} msgs", file=self.out, flush=True)

    def summary(self, title: str, rows: list[tuple[str, str, str]]) -> None:
        """``rows`` of (section, what, value); a section name starts a group."""
        width = max(len(what) for _, what, _ in rows)
        print(f"\n{title}", file=self.out)
        section = None
        for name, what, value in rows:
            if name != section:
                section = name
                print(f"  {name}", file=self.out)
            print(f"    {what:<{width}}  {value}", file=self.out)
        self.out.flush()


class RichDisplay(Display):
    """Bars and a live status line on a terminal, the summary as a rich table."""

    def __init__(self, out: TextIO = sys.stdout, *, quiet: bool = False, live: bool = True) -> None:
        super().__init__(out, quiet=quiet)
        from rich.console import Console

        self.console = Console(file=out, highlight=False)
        self._live: Any = None
        self._live_wanted = live and not quiet

    def _start_live(self, total: int) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as Bars
        from rich.text import Text

        self._bars = Bars(TextColumn("{task.description:<26}"), BarColumn(bar_width=40), MofNCompleteColumn(),
                          console=self.console)
        self._placed = self._bars.add_task("orders placed (HTTP 202)", total=total)
        self._finished = self._bars.add_task("orders finished", total=total)
        self._status = Text("")
        self._group = Group
        self._live = Live(Group(self._bars, self._status), console=self.console, refresh_per_second=8,
                          transient=False)
        self._live.start()

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text)

    def update(self, p: Progress, *, force: bool = False) -> None:
        if self.quiet:
            return
        if not self._live_wanted:
            super().update(p, force=force)
            return
        if self._live is None:
            self._start_live(p.total)
        from rich.text import Text

        self._bars.update(self._placed, completed=p.placed)
        self._bars.update(self._finished, completed=p.completed + p.compensated)
        self._status = Text(f"{p.elapsed:5.1f}s  completed {p.completed}  compensated {p.compensated}  in flight "
                            f"{p.placed - p.completed - p.compensated}  waiting: intake {p.waiting_intake}, steps "
                            f"{p.waiting_steps}  broker {p.messages:,} msgs")
        self._live.update(self._group(self._bars, self._status))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary(self, title: str, rows: list[tuple[str, str, str]]) -> None:
        self.close()
        from rich import box
        from rich.table import Table

        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, header_style="bold")
        table.add_column("pattern / part", style="cyan")
        table.add_column("what", no_wrap=True)
        table.add_column("value", justify="right", no_wrap=True)
        section = None
        for name, what, value in rows:
            if name != section and section is not None:
                table.add_section()
            table.add_row(name if name != section else "", what, value)
            section = name
        self.console.print(table)


def make_display(*, quiet: bool, plain: bool = False, out: TextIO = sys.stdout) -> Display:
    """Rich when installed, wanted and writing to a terminal; plain lines otherwise (a pipe, a log, a test)."""
    if plain or not out.isatty() or not rich_available():
        return Display(out, quiet=quiet)
    return RichDisplay(out, quiet=quiet)
