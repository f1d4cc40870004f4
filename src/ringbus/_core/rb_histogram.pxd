# Thin declarations of csrc/rb_histogram.h (log-linear histogram, HdrHistogram's bucket layout).
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "rb_histogram.h" nogil:
    ctypedef struct rb_hist:
        uint64_t *counts
        uint64_t count
        uint64_t sum
        uint64_t min
        uint64_t max
        uint32_t n_buckets
        uint32_t lo
        uint32_t hi
        uint8_t bits
        uint8_t top

    int RB_HIST_MIN_BITS
    int RB_HIST_MAX_BITS
    int RB_HIST_MAX_TOP

    int rb_hist_init(rb_hist *h, unsigned bits, unsigned top)
    void rb_hist_free(rb_hist *h)
    uint32_t rb_hist_index(const rb_hist *h, uint64_t v)
    uint64_t rb_hist_lowest(const rb_hist *h, uint32_t i)
    uint64_t rb_hist_width(const rb_hist *h, uint32_t i)
    int rb_hist_record(rb_hist *h, uint64_t v)
    int rb_hist_record_n(rb_hist *h, uint64_t v, uint64_t n)
    uint64_t rb_hist_percentile(const rb_hist *h, double p)
    uint64_t rb_hist_count_le(const rb_hist *h, uint64_t v)
    int rb_hist_merge(rb_hist *dst, const rb_hist *src)
    void rb_hist_reset(rb_hist *h)
