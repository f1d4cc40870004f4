"""Shared recorder for the figures the fault suite measures (runs, lost, duplicates, detected %, ...).

Each test calls ``record("power_loss.always", runs=200, lost=0, duplicates=3)``; one JSON line is
appended to the file named by the environment variable ``RINGBUS_FIGURES`` (nothing happens when it
is unset), so docs/reliability.md can be built from a real run:

    RINGBUS_FIGURES=/tmp/figures.jsonl python -m pytest tests/faults
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

ENV = "RINGBUS_FIGURES"

_lock = threading.Lock()


def record(name: str, **figures: Any) -> None:
    """Appends ``{"name": name, "time": ..., "pid": ..., **figures}`` as one JSON line to $RINGBUS_FIGURES.

    Figures must be JSON-serialisable (numbers, strings, lists, dicts). A no-op when the variable is unset.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"figure name must be a non-empty str, got {name!r}")
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"name": name, "time": time.time(), "pid": os.getpid(), **figures}, sort_keys=True)
    # one write of one line with O_APPEND: lines from several processes never interleave
    with _lock:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def load(path: str) -> list[dict[str, Any]]:
    """Every figure recorded in ``path``, in order (for building docs/reliability.md)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
