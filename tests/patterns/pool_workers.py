"""Handlers for worker processes of the competing-consumers tests, and a script that runs a pool until SIGTERM.

Worker processes are spawned, so their handlers live here (importable, picklable, light to import). Each
handler records what it did with one ``os.write`` per line to a file of its own process: unbuffered, so a
record written before a SIGKILL is on disk.

As a script: ``python pool_workers.py URL QUEUE RECORD_DIR`` runs ``WorkerPool.run()`` with 4 worker processes
and the slow handler, prints its final stats, and exits when it gets SIGTERM.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ringbus.message import Message

_files: dict[str, int] = {}


def _write(directory: str, line: str) -> None:
    fd = _files.get(directory)
    if fd is None:
        fd = _files[directory] = os.open(Path(directory) / f"{os.getpid()}.log",
                                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode() + b"\n")


def record(directory: str, message: Message) -> None:
    """Handled: one line with the message id."""
    _write(directory, message.id)


def record_slowly(directory: str, seconds: float, message: Message) -> None:
    """``S id`` when it starts, ``E id`` once done ``seconds`` later."""
    _write(directory, f"S {message.id}")
    time.sleep(seconds)
    _write(directory, f"E {message.id}")


def fail_poison(directory: str, message: Message) -> None:
    """Records every call; raises for a body that starts with ``poison``."""
    _write(directory, message.id)
    if bytes(message.body).startswith(b"poison"):
        raise ValueError(f"cannot parse order {bytes(message.body)!r}")


def read_records(directory: str | Path) -> list[str]:
    """Every line every process wrote, in no particular order between processes."""
    lines: list[str] = []
    for path in Path(directory).glob("*.log"):
        lines.extend(path.read_text().splitlines())
    return lines


def _main(url: str, queue: str, directory: str) -> int:
    import functools
    import logging

    from ringbus.patterns.competing_consumers import WorkerPool

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    pool = WorkerPool(url, queue, functools.partial(record_slowly, directory, 0.05), workers=4, mode="process",
                      prefetch=4)
    stats = pool.run(shutdown_timeout=20.0)
    print(f"stopped: processed={stats.processed} in_flight={stats.in_flight}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:4]))
