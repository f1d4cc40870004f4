"""Retry delays: exponential backoff with full jitter, shared by every pattern that retries."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before delivery attempt ``n + 1`` after ``n`` failures.

    ``delay(n) = uniform(0, min(max_delay, base * factor ** (n - 1)))`` ("full jitter": retries of many
    failed messages spread out instead of arriving together). ``jitter=False`` gives the plain exponential
    ceiling, useful in tests and examples that print delays.
    """

    base: float = 0.1
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: bool = True
    _random: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("base", "factor", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"RetryPolicy.{name} must be a finite number >= 0, got {value!r}")
        if self.factor < 1:
            raise ValueError(f"RetryPolicy.factor must be >= 1, got {self.factor!r}")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure (1 for the first)."""
        if failures < 1:
            return 0.0
        ceiling = min(self.max_delay, self.base * self.factor ** min(failures - 1, 64))
        return self._random.uniform(0.0, ceiling) if self.jitter else ceiling
