/* rb_histogram.h - log-linear histogram of non-negative integers (latencies in
   nanoseconds), HdrHistogram's bucket layout: values below 2^bits each have a
   bucket of their own; every power of two above is cut into 2^bits equal
   buckets, so a bucket is at most 2^-bits of its smallest value wide. Memory
   is fixed by (bits, top) and taken at the first record, so an idle histogram
   costs a few dozen bytes. record is O(1); a percentile is one pass over the
   buckets in use. One writer at a time (the bindings: the GIL). Header-only
   C11; no Python in here. */
#ifndef RB_HISTOGRAM_H
#define RB_HISTOGRAM_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "rb_common.h"

#define RB_HIST_MIN_BITS 1
#define RB_HIST_MAX_BITS 14
#define RB_HIST_MAX_TOP 63

typedef struct {
    uint64_t *counts;   /* n_buckets counters; NULL until the first record */
    uint64_t count;     /* values recorded */
    uint64_t sum;       /* their sum, saturating at UINT64_MAX */
    uint64_t min;       /* exact smallest value (UINT64_MAX when empty) */
    uint64_t max;       /* exact largest value, even above the top bucket */
    uint32_t n_buckets; /* (top - bits + 1) << bits */
    uint32_t lo;        /* lowest bucket in use (scans start here) */
    uint32_t hi;        /* highest bucket in use (scans end here) */
    uint8_t bits;       /* precision: 2^bits buckets per power of two */
    uint8_t top;        /* values >= 2^top are counted in the last bucket */
} rb_hist;

/* floor(log2(v)) for v >= 1. */
static inline unsigned rb_hist_log2(uint64_t v)
{
#if defined(__GNUC__) || defined(__clang__)
    return 63u - (unsigned)__builtin_clzll(v);
#else
    unsigned e = 0;
    while (v >>= 1)
        e++;
    return e;
#endif
}

/* Returns 0, or -1 when bits/top are out of range (bits 1..14, bits < top <= 63).
   Takes no memory yet. */
static inline int rb_hist_init(rb_hist *h, unsigned bits, unsigned top)
{
    memset(h, 0, sizeof(*h));
    if (bits < RB_HIST_MIN_BITS || bits > RB_HIST_MAX_BITS || top <= bits || top > RB_HIST_MAX_TOP)
        return -1;
    h->bits = (uint8_t)bits;
    h->top = (uint8_t)top;
    h->n_buckets = (uint32_t)(top - bits + 1) << bits;
    h->min = UINT64_MAX;
    h->lo = h->n_buckets;
    return 0;
}

static inline void rb_hist_free(rb_hist *h)
{
    free(h->counts);
    h->counts = NULL;
}

static inline uint32_t rb_hist_index(const rb_hist *h, uint64_t v)
{
    unsigned bits = h->bits;
    if (v < ((uint64_t)1 << bits))
        return (uint32_t)v;
    if (RB_UNLIKELY(v >> h->top))
        return h->n_buckets - 1;
    unsigned shift = rb_hist_log2(v) - bits;  /* v >> shift is in [2^bits, 2^(bits+1)) */
    return (uint32_t)(((uint64_t)(shift + 1) << bits) + ((v >> shift) - ((uint64_t)1 << bits)));
}

/* Smallest value of bucket i. */
static inline uint64_t rb_hist_lowest(const rb_hist *h, uint32_t i)
{
    unsigned bits = h->bits;
    if (i < (1u << bits))
        return i;
    unsigned shift = (i >> bits) - 1;
    uint64_t mantissa = i & ((1u << bits) - 1);
    return (((uint64_t)1 << bits) + mantissa) << shift;
}

/* How many values bucket i holds (1 in the exact range). */
static inline uint64_t rb_hist_width(const rb_hist *h, uint32_t i)
{
    unsigned bits = h->bits;
    return i < (1u << bits) ? 1 : (uint64_t)1 << ((i >> bits) - 1);
}

/* Allocates the counters; 0, or -1 when memory is short. */
static inline int rb_hist_alloc(rb_hist *h)
{
    h->counts = (uint64_t *)calloc(h->n_buckets, sizeof(uint64_t));
    return h->counts == NULL ? -1 : 0;
}

/* Counts v n times; 0, or -1 when the counters cannot be allocated (nothing counted). */
static inline int rb_hist_record_n(rb_hist *h, uint64_t v, uint64_t n)
{
    if (RB_UNLIKELY(h->counts == NULL) && rb_hist_alloc(h) != 0)
        return -1;
    uint32_t i = rb_hist_index(h, v);
    h->counts[i] += n;
    h->count += n;
    uint64_t add = v * n;
    h->sum = (n && add / n != v) || h->sum > UINT64_MAX - add ? UINT64_MAX : h->sum + add;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    if (i < h->lo)
        h->lo = i;
    if (i > h->hi)
        h->hi = i;
    return 0;
}

static inline int rb_hist_record(rb_hist *h, uint64_t v)
{
    return rb_hist_record_n(h, v, 1);  /* inlined: the n arithmetic folds away */
}

/* The value at percentile p (0..100): the smallest recorded value v such that
   at least p% of the values are <= v, within v's bucket; reported as the
   bucket's middle, kept inside [min, max]. 0 when empty. */
static inline uint64_t rb_hist_percentile(const rb_hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (!(p > 0.0))  /* also NaN */
        return h->min;
    if (p >= 100.0)
        return h->max;
    double r = p * (double)h->count / 100.0;
    uint64_t rank = (uint64_t)r;
    if ((double)rank < r)
        rank++;
    if (rank == 0)
        rank = 1;
    if (rank >= h->count)
        return h->max;
    uint64_t seen = 0;
    for (uint32_t i = h->lo; i <= h->hi; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = rb_hist_lowest(h, i) + (rb_hist_width(h, i) - 1) / 2;
            return v < h->min ? h->min : v > h->max ? h->max : v;
        }
    }
    return h->max;  /* not reached: the counts add up to count */
}

/* Values counted in buckets up to the one that holds v (so within v's bucket
   precision of "values <= v"). */
static inline uint64_t rb_hist_count_le(const rb_hist *h, uint64_t v)
{
    if (h->count == 0)
        return 0;
    uint32_t end = rb_hist_index(h, v);
    if (end >= h->hi)
        return h->count;
    uint64_t seen = 0;
    for (uint32_t i = h->lo; i <= end; i++)
        seen += h->counts[i];
    return seen;
}

static inline int rb_hist_compatible(const rb_hist *a, const rb_hist *b)
{
    return a->bits == b->bits && a->top == b->top;
}

/* Adds src's values to dst; 0, -1 when memory is short, -2 when their layouts differ. */
static inline int rb_hist_merge(rb_hist *dst, const rb_hist *src)
{
    if (!rb_hist_compatible(dst, src))
        return -2;
    if (src->count == 0)
        return 0;
    if (dst->counts == NULL && rb_hist_alloc(dst) != 0)
        return -1;
    for (uint32_t i = src->lo; i <= src->hi; i++)
        dst->counts[i] += src->counts[i];
    dst->count += src->count;
    dst->sum = dst->sum > UINT64_MAX - src->sum ? UINT64_MAX : dst->sum + src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    if (src->lo < dst->lo)
        dst->lo = src->lo;
    if (src->hi > dst->hi)
        dst->hi = src->hi;
    return 0;
}

/* Forgets every value; keeps the counters' memory for the next ones. */
static inline void rb_hist_reset(rb_hist *h)
{
    if (h->counts != NULL && h->count)
        memset(h->counts + h->lo, 0, (size_t)(h->hi - h->lo + 1) * sizeof(uint64_t));
    h->count = 0;
    h->sum = 0;
    h->min = UINT64_MAX;
    h->max = 0;
    h->lo = h->n_buckets;
    h->hi = 0;
}

#endif /* RB_HISTOGRAM_H */
