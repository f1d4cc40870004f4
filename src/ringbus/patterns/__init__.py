"""The messaging patterns, each a short module written only against :class:`ringbus.Bus`.

So each runs unchanged on ``memory://``, the embedded broker and the other
backends. Shared pieces: :class:`RetryPolicy` (backoff with jitter) and
:class:`PatternStats` (what every pattern's ``stats()`` returns).
"""

from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = ["RetryPolicy", "PatternStats", "StatsCounter"]
