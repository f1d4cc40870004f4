"""Pure-Python twin of the native Histogram: the reference model for tests and the fallback build.

The bucket layout is csrc/rb_histogram.h's, index for index, so both report the same numbers.
"""

from __future__ import annotations

import math
import operator

__all__ = ["Histogram", "layout", "DEFAULT_HIGHEST", "DEFAULT_PRECISION_BITS"]

DEFAULT_HIGHEST = 1 << 44  # ns, ~4.9 hours: above it values share the top bucket (max stays exact)
DEFAULT_PRECISION_BITS = 5  # 32 buckets per power of two: a bucket is <= 3.1% of its values wide
MIN_BITS, MAX_BITS, MAX_TOP = 1, 14, 63
_U64 = (1 << 64) - 1
_MAX_SECONDS = 18446744073.0  # just under 2**64 ns: longer durations saturate


def layout(highest: int, precision_bits: int) -> tuple[int, int]:
    """(precision_bits, top) for a histogram that tracks values up to ``highest``; ValueError if out of range."""
    if isinstance(precision_bits, bool) or not isinstance(precision_bits, int) \
            or not MIN_BITS <= precision_bits <= MAX_BITS:
        raise ValueError(f"precision_bits must be an int from {MIN_BITS} to {MAX_BITS}, got {precision_bits!r}")
    if isinstance(highest, bool) or not isinstance(highest, int) or not 2 <= highest <= (1 << MAX_TOP):
        raise ValueError(f"highest must be an int from 2 to 2**{MAX_TOP}, got {highest!r}")
    return precision_bits, max(precision_bits + 1, (highest - 1).bit_length())


def _value(value: object, name: str) -> int:
    if isinstance(value, (bool, float)) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    v = operator.index(value)
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    if v > _U64:
        raise OverflowError(f"{name} must fit in an unsigned 64-bit int, got {v}")
    return v


def _percent(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"percentile must be a number from 0 to 100, not {type(p).__name__}")
    q = float(p)
    if math.isnan(q) or not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be from 0 to 100, got {p!r}")
    return q


class Histogram:
    """Counts of non-negative integers (latencies in ns) in log-linear buckets, HdrHistogram style.

    See the native class (ringbus._core._histogram) for the parameters; this twin behaves the same.
    """

    __slots__ = ("_bits", "_top", "_n", "_counts", "_count", "_sum", "_min", "_max", "_lo", "_hi")

    def __init__(self, highest: int = DEFAULT_HIGHEST, precision_bits: int = DEFAULT_PRECISION_BITS) -> None:
        self._bits, self._top = layout(highest, precision_bits)
        self._n = (self._top - self._bits + 1) << self._bits
        self._counts: list[int] | None = None  # allocated at the first record, like the native one
        self._count = self._sum = self._max = self._hi = 0
        self._min = _U64  # as the native one: above every value while empty
        self._lo = self._n  # lowest and highest bucket in use; scans run between them


    def _index(self, v: int) -> int:
        bits = self._bits
        if v < (1 << bits):
            return v
        if v >> self._top:
            return self._n - 1
        shift = v.bit_length() - 1 - bits
        return ((shift + 1) << bits) + ((v >> shift) - (1 << bits))

    def _lowest(self, i: int) -> int:
        bits = self._bits
        if i < (1 << bits):
            return i
        return ((1 << bits) + (i & ((1 << bits) - 1))) << ((i >> bits) - 1)

    def _width(self, i: int) -> int:
        bits = self._bits
        return 1 if i < (1 << bits) else 1 << ((i >> bits) - 1)

    def _add(self, v: int, n: int) -> None:
        if self._counts is None:
            self._counts = [0] * self._n
        i = self._index(v)
        self._counts[i] += n
        self._count += n
        self._sum = min(_U64, self._sum + v * n)
        self._min = min(self._min, v)
        self._max = max(self._max, v)
        self._lo = min(self._lo, i)
        self._hi = max(self._hi, i)

    def record(self, value_ns: int, count: int = 1) -> None:
        """Count ``value_ns`` (an int >= 0) ``count`` times."""
        self._add(_value(value_ns, "value_ns"), _value(count, "count"))

    def record_seconds(self, seconds: float) -> None:
        """Count a duration given in seconds (a float); negative ones (clock steps) count as 0."""
        s = float(seconds)
        self._add(_U64 if s >= _MAX_SECONDS else int(s * 1e9) if s > 0.0 else 0, 1)

    def percentile(self, p: float) -> int:
        """The value at percentile ``p`` (0-100): at least p% of values are <= it, within its bucket; 0 if empty."""
        q = _percent(p)
        if not self._count:
            return 0
        if q <= 0.0:
            return self._min
        if q >= 100.0:
            return self._max
        r = q * float(self._count) / 100.0  # the C code's double arithmetic, for the same rank
        rank = max(1, math.ceil(r))
        if rank >= self._count:
            return self._max
        seen = 0
        assert self._counts is not None
        for i in range(self._lo, self._hi + 1):
            seen += self._counts[i]
            if seen >= rank:
                v = self._lowest(i) + (self._width(i) - 1) // 2
                return min(max(v, self._min), self._max)
        return self._max  # pragma: no cover - the counts add up to count

    def count_at_or_below(self, value_ns: int) -> int:
        """How many values are <= ``value_ns``, counting the whole bucket that holds ``value_ns``."""
        end = self._index(_value(value_ns, "value_ns"))
        if not self._count:
            return 0
        if end >= self._hi:
            return self._count
        assert self._counts is not None
        return sum(self._counts[self._lo:end + 1])

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s values to this one (same ``highest`` and ``precision_bits``)."""
        if not isinstance(other, Histogram):
            raise TypeError(f"can only merge a Histogram, not {type(other).__name__}")
        if (other._bits, other._top) != (self._bits, self._top):
            raise ValueError(f"cannot merge histograms of different layouts: (highest=2**{other._top}, "
                             f"precision_bits={other._bits}) into (highest=2**{self._top}, "
                             f"precision_bits={self._bits})")
        if not other._count:
            return
        assert other._counts is not None
        if self._counts is None:
            self._counts = [0] * self._n
        for i in range(other._lo, other._hi + 1):
            self._counts[i] += other._counts[i]
        self._count += other._count
        self._sum = min(_U64, self._sum + other._sum)
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        self._lo = min(self._lo, other._lo)
        self._hi = max(self._hi, other._hi)

    def copy(self) -> Histogram:
        """An independent histogram with the same values."""
        out = Histogram(self.highest, self._bits)
        out.merge(self)
        return out

    def reset(self) -> None:
        """Forget every value (the counters' memory is kept for the next ones)."""
        if self._counts is not None:
            self._counts = [0] * self._n
        self._count = self._sum = self._max = self._hi = 0
        self._min = _U64
        self._lo = self._n

    def buckets(self) -> list[tuple[int, int, int]]:
        """(lowest, highest, count) of every bucket that holds values, lowest first."""
        if not self._count:
            return []
        assert self._counts is not None
        return [(self._lowest(i), self._lowest(i) + self._width(i) - 1, self._counts[i])
                for i in range(self._lo, self._hi + 1) if self._counts[i]]

    @property
    def count(self) -> int:
        """Values recorded."""
        return self._count

    @property
    def sum(self) -> int:
        """Their sum (saturates at 2**64 - 1)."""
        return self._sum

    @property
    def min(self) -> int:
        """The smallest value recorded (exact); 0 if empty."""
        return self._min if self._count else 0

    @property
    def max(self) -> int:
        """The largest value recorded (exact, even above ``highest``); 0 if empty."""
        return self._max

    @property
    def mean(self) -> float:
        """The mean value; 0.0 if empty."""
        return self._sum / self._count if self._count else 0.0

    @property
    def highest(self) -> int:
        """Largest value told apart from larger ones (a power of two)."""
        return 1 << self._top

    @property
    def precision_bits(self) -> int:
        """Buckets per power of two, as a power of two."""
        return self._bits

    def __repr__(self) -> str:
        return (f"<Histogram count={self._count} min={self.min} max={self._max} "
                f"highest=2**{self._top} precision_bits={self._bits}>")
