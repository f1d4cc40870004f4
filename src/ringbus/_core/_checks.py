"""Argument checks shared by the pure-Python twins; the messages match the native core's."""

from __future__ import annotations

import math
import operator
import sys
import time


def checked_count(value: object, name: str, minimum: int = 0) -> int:
    """An item count >= minimum, or a clear error naming the argument."""
    try:
        n = operator.index(value)  # type: ignore[arg-type]  # any object: TypeError below if it has no __index__
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not -sys.maxsize - 1 <= n <= sys.maxsize:  # as the native core's Py_ssize_t conversion
        raise OverflowError(f"{name} does not fit in a C ssize_t, got {value!r}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def checked_priority(priority: object) -> int:
    """An int64 priority, or a clear error naming the argument."""
    if isinstance(priority, float) or not hasattr(priority, "__index__"):
        raise TypeError(f"priority must be an int, got {type(priority).__name__}")
    p = operator.index(priority)
    if not -(2**63) <= p < 2**63:
        raise OverflowError(f"priority must fit in a signed 64-bit int, got {p}")
    return p


def deadline(timeout: object) -> float | None:
    """Absolute time.monotonic() deadline for a timeout in seconds; None waits forever."""
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    if timeout > 9.0e9:
        return None
    return time.monotonic() + timeout


def remaining(deadline_at: float | None) -> float | None:
    """Seconds left before a deadline (None: no limit); <= 0 means it passed."""
    return None if deadline_at is None else deadline_at - time.monotonic()
