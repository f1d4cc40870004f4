# cython: language_level=3
"""Histogram: latencies in nanoseconds in log-linear buckets, over csrc/rb_histogram.h."""

cimport cython
from cpython.long cimport PyLong_AsUnsignedLongLong
from libc.math cimport isnan
from libc.stdint cimport uint32_t, uint64_t

from ringbus._core.rb_histogram cimport (
    RB_HIST_MAX_BITS,
    RB_HIST_MAX_TOP,
    RB_HIST_MIN_BITS,
    rb_hist_count_le,
    rb_hist_free,
    rb_hist_init,
    rb_hist_lowest,
    rb_hist_merge,
    rb_hist_percentile,
    rb_hist_record,
    rb_hist_record_n,
    rb_hist_reset,
    rb_hist_width,
)

DEFAULT_HIGHEST = 1 << 44  # ns, ~4.9 hours: above it values share the top bucket (max stays exact)
DEFAULT_PRECISION_BITS = 5  # 32 buckets per power of two: a bucket is <= 3.1% of its values wide

_HIGHEST_LIMIT = 0x8000000000000000  # 2**RB_HIST_MAX_TOP, as a Python int
cdef double _MAX_SECONDS = 18446744073.0  # just under 2**64 ns: longer durations saturate


cdef inline uint64_t _value(object value, str name) except? 0:
    if type(value) is not int:
        if isinstance(value, (bool, float)) or not hasattr(value, "__index__"):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        value = value.__index__()
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    try:
        return PyLong_AsUnsignedLongLong(value)
    except OverflowError:
        raise OverflowError(f"{name} must fit in an unsigned 64-bit int, got {value}") from None


cdef inline double _percent(object p) except? -1.0:
    cdef double q
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"percentile must be a number from 0 to 100, not {type(p).__name__}")
    q = p
    if isnan(q) or q < 0.0 or q > 100.0:
        raise ValueError(f"percentile must be from 0 to 100, got {p!r}")
    return q


def layout(highest, precision_bits):
    """(precision_bits, top) for a histogram that tracks values up to ``highest``; ValueError if out of range."""
    if isinstance(precision_bits, bool) or not isinstance(precision_bits, int) \
            or not RB_HIST_MIN_BITS <= precision_bits <= RB_HIST_MAX_BITS:
        raise ValueError(f"precision_bits must be an int from {RB_HIST_MIN_BITS} to {RB_HIST_MAX_BITS}, "
                         f"got {precision_bits!r}")
    if isinstance(highest, bool) or not isinstance(highest, int) or not 2 <= highest <= _HIGHEST_LIMIT:
        raise ValueError(f"highest must be an int from 2 to 2**{RB_HIST_MAX_TOP}, got {highest!r}")
    return precision_bits, max(precision_bits + 1, (highest - 1).bit_length())


@cython.final
cdef class Histogram:
    """Counts of non-negative integers (latencies in ns) in log-linear buckets, HdrHistogram style.

    Parameters
    ----------
    highest : int
        Largest value told apart (rounded up to a power of two); larger ones share the top bucket, though
        ``max`` stays exact. Default 2**44 ns (~4.9 hours).
    precision_bits : int
        ``2**precision_bits`` buckets per power of two: a percentile is within ``2**-precision_bits`` of the
        true value (half that, as reported from the bucket's middle). Values below ``2**precision_bits`` are
        exact. Default 5 (3.1%).

    Notes
    -----
    Memory is fixed by the two parameters (10 KiB by default) and taken at the first record. ``record`` is
    O(1); a percentile is one pass over the buckets in use. Calls are serialised by the GIL; the object is
    not meant to be shared between threads without a lock around read-modify sequences.
    """

    def __cinit__(self, highest=DEFAULT_HIGHEST, precision_bits=DEFAULT_PRECISION_BITS):
        bits, top = layout(highest, precision_bits)
        if rb_hist_init(&self._h, bits, top) != 0:  # pragma: no cover - layout() checked the range
            raise ValueError(f"bad histogram layout bits={bits} top={top}")

    def __dealloc__(self):
        rb_hist_free(&self._h)

    def record(self, value_ns, count=1):
        """Count ``value_ns`` (an int >= 0) ``count`` times."""
        cdef uint64_t v = _value(value_ns, "value_ns")
        cdef uint64_t n
        if count == 1:
            if rb_hist_record(&self._h, v) != 0:
                raise MemoryError("cannot allocate a Histogram's counters")
            return
        n = _value(count, "count")
        if rb_hist_record_n(&self._h, v, n) != 0:
            raise MemoryError("cannot allocate a Histogram's counters")

    def record_seconds(self, double seconds):
        """Count a duration given in seconds (a float); negative ones (clock steps) count as 0."""
        cdef uint64_t v
        if seconds >= _MAX_SECONDS:
            v = 0xFFFFFFFFFFFFFFFF
        elif seconds > 0.0:
            v = <uint64_t>(seconds * 1e9)
        else:
            v = 0  # also NaN
        if rb_hist_record(&self._h, v) != 0:
            raise MemoryError("cannot allocate a Histogram's counters")

    def percentile(self, p):
        """The value at percentile ``p`` (0-100): at least p% of values are <= it, within its bucket; 0 if empty."""
        return rb_hist_percentile(&self._h, _percent(p))

    def count_at_or_below(self, value_ns):
        """How many values are <= ``value_ns``, counting the whole bucket that holds ``value_ns``."""
        return rb_hist_count_le(&self._h, _value(value_ns, "value_ns"))

    cdef int _check_compatible(self, Histogram other) except -1:
        if other._h.bits != self._h.bits or other._h.top != self._h.top:
            raise ValueError(f"cannot merge histograms of different layouts: (highest=2**{other._h.top}, "
                             f"precision_bits={other._h.bits}) into (highest=2**{self._h.top}, "
                             f"precision_bits={self._h.bits})")
        return 0

    def merge(self, Histogram other not None):
        """Add ``other``'s values to this one (same ``highest`` and ``precision_bits``)."""
        self._check_compatible(other)
        if rb_hist_merge(&self._h, &other._h) != 0:
            raise MemoryError("cannot allocate a Histogram's counters")

    def copy(self):
        """An independent histogram with the same values."""
        cdef Histogram out = Histogram.__new__(Histogram, self.highest, self._h.bits)
        out.merge(self)
        return out

    def reset(self):
        """Forget every value (the counters' memory is kept for the next ones)."""
        rb_hist_reset(&self._h)

    def buckets(self):
        """(lowest, highest, count) of every bucket that holds values, lowest first."""
        cdef uint32_t i
        cdef list out = []
        if self._h.count == 0:
            return out
        for i in range(self._h.lo, self._h.hi + 1):
            if self._h.counts[i]:
                out.append((rb_hist_lowest(&self._h, i), rb_hist_lowest(&self._h, i) + rb_hist_width(&self._h, i) - 1,
                            self._h.counts[i]))
        return out

    @property
    def count(self):
        """Values recorded."""
        return self._h.count

    @property
    def sum(self):
        """Their sum (saturates at 2**64 - 1)."""
        return self._h.sum

    @property
    def min(self):
        """The smallest value recorded (exact); 0 if empty."""
        return self._h.min if self._h.count else 0

    @property
    def max(self):
        """The largest value recorded (exact, even above ``highest``); 0 if empty."""
        return self._h.max

    @property
    def mean(self):
        """The mean value; 0.0 if empty."""
        return <double>self._h.sum / <double>self._h.count if self._h.count else 0.0

    @property
    def highest(self):
        """Largest value told apart from larger ones (a power of two)."""
        return (<uint64_t>1) << self._h.top

    @property
    def precision_bits(self):
        """Buckets per power of two, as a power of two."""
        return self._h.bits

    def __repr__(self):
        return (f"<Histogram count={self._h.count} min={self.min} max={self._h.max} "
                f"highest=2**{self._h.top} precision_bits={self._h.bits}>")
