"""Type stubs for ringbus._core._histogram (the native Histogram); the twin _histogram_py has the same API."""

from typing import final

from typing_extensions import Self

DEFAULT_HIGHEST: int
DEFAULT_PRECISION_BITS: int

def layout(highest: int, precision_bits: int) -> tuple[int, int]: ...

@final
class Histogram:
    """Counts of non-negative integers (latencies in ns) in log-linear buckets, HdrHistogram style."""

    def __new__(cls, highest: int = ..., precision_bits: int = ...) -> Self: ...
    def record(self, value_ns: int, count: int = 1) -> None:
        """Count value_ns (an int >= 0) count times."""
    def record_seconds(self, seconds: float) -> None:
        """Count a duration given in seconds; negative ones count as 0."""
    def percentile(self, p: float) -> int:
        """The value at percentile p (0-100), within its bucket; 0 if empty."""
    def count_at_or_below(self, value_ns: int) -> int:
        """How many values are <= value_ns, counting the whole bucket that holds value_ns."""
    def merge(self, other: Histogram) -> None:
        """Add other's values to this one (same highest and precision_bits)."""
    def copy(self) -> Histogram:
        """An independent histogram with the same values."""
    def reset(self) -> None:
        """Forget every value."""
    def buckets(self) -> list[tuple[int, int, int]]:
        """(lowest, highest, count) of every bucket that holds values, lowest first."""
    @property
    def count(self) -> int: ...
    @property
    def sum(self) -> int: ...
    @property
    def min(self) -> int: ...
    @property
    def max(self) -> int: ...
    @property
    def mean(self) -> float: ...
    @property
    def highest(self) -> int: ...
    @property
    def precision_bits(self) -> int: ...
