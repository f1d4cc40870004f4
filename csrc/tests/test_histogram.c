/* rb_histogram.h on its own: every value lands in a bucket that holds it, the
   buckets tile [0, 2^top) without gaps, the edges (0, 2^top, UINT64_MAX) and the
   saturating sum behave, merge and reset keep the invariants. Built and run by
   tests/test_histogram.py under AddressSanitizer/UBSan. */
#include <stdio.h>
#include <stdlib.h>
#include "rb_histogram.h"

#define FAIL(...) do { printf(__VA_ARGS__); printf("\n"); fflush(stdout); return 1; } while (0)

static int check_layout(unsigned bits, unsigned top)
{
    rb_hist h;
    if (rb_hist_init(&h, bits, top) != 0)
        FAIL("init(%u, %u) refused", bits, top);
    uint64_t expect_low = 0;
    for (uint32_t i = 0; i < h.n_buckets; i++) {
        uint64_t low = rb_hist_lowest(&h, i), width = rb_hist_width(&h, i);
        if (low != expect_low)
            FAIL("bits %u top %u: bucket %u starts at %llu, expected %llu", bits, top, i,
                 (unsigned long long)low, (unsigned long long)expect_low);
        if (rb_hist_index(&h, low) != i || rb_hist_index(&h, low + width - 1) != i)
            FAIL("bits %u top %u: bucket %u does not hold its own edges", bits, top, i);
        if (low >= ((uint64_t)1 << bits) && width * ((uint64_t)1 << bits) > low)
            FAIL("bits %u top %u: bucket %u is wider than 2^-bits of its values", bits, top, i);
        expect_low = low + width;
    }
    if (expect_low != (uint64_t)1 << top)
        FAIL("bits %u top %u: buckets end at %llu, not 2^top", bits, top, (unsigned long long)expect_low);
    if (rb_hist_index(&h, (uint64_t)1 << top) != h.n_buckets - 1 || rb_hist_index(&h, UINT64_MAX) != h.n_buckets - 1)
        FAIL("values above 2^top must land in the top bucket");
    rb_hist_free(&h);
    return 0;
}

static int check_counts(void)
{
    rb_hist h, g;
    if (rb_hist_init(&h, 5, 44) != 0 || rb_hist_init(&g, 5, 44) != 0)
        FAIL("init refused");
    if (rb_hist_percentile(&h, 50.0) != 0 || rb_hist_count_le(&h, 10) != 0 || h.counts != NULL)
        FAIL("an empty histogram reports 0 and holds no memory");
    for (uint64_t v = 1; v <= 1000; v++)
        if (rb_hist_record(&h, v * 1000) != 0)
            FAIL("record failed");
    if (h.count != 1000 || h.min != 1000 || h.max != 1000000 || h.sum != 500500000ull)
        FAIL("count/min/max/sum wrong: %llu %llu %llu %llu", (unsigned long long)h.count,
             (unsigned long long)h.min, (unsigned long long)h.max, (unsigned long long)h.sum);
    uint64_t p50 = rb_hist_percentile(&h, 50.0);
    if (p50 < 500000 - 500000 / 32 || p50 > 500000 + 500000 / 32)
        FAIL("p50 %llu is not within 1/32 of 500000", (unsigned long long)p50);
    if (rb_hist_percentile(&h, 100.0) != 1000000 || rb_hist_percentile(&h, 0.0) != 1000)
        FAIL("p0/p100 must be min/max");
    if (rb_hist_count_le(&h, 2000000) != 1000 || rb_hist_count_le(&h, 900) != 0 || rb_hist_count_le(&h, 999) != 1)
        FAIL("count_le at the ends");
    rb_hist_record(&g, UINT64_MAX);
    rb_hist_record(&g, UINT64_MAX);
    if (g.sum != UINT64_MAX || g.max != UINT64_MAX || rb_hist_percentile(&g, 50.0) != UINT64_MAX)
        FAIL("the sum saturates and max stays exact above the top bucket");
    if (rb_hist_record_n(&g, (uint64_t)1 << 40, (uint64_t)1 << 40) != 0 || g.count != 2 + ((uint64_t)1 << 40))
        FAIL("record_n");
    if (rb_hist_merge(&h, &g) != 0 || h.count != 1002 + ((uint64_t)1 << 40) || h.max != UINT64_MAX || h.min != 1000)
        FAIL("merge");
    rb_hist bad;
    rb_hist_init(&bad, 6, 44);
    if (rb_hist_merge(&h, &bad) != -2)
        FAIL("merge of different layouts must be refused");
    rb_hist_reset(&h);
    if (h.count || h.sum || h.max || rb_hist_percentile(&h, 99.0) != 0)
        FAIL("reset");
    for (uint32_t i = 0; i < h.n_buckets; i++)
        if (h.counts[i])
            FAIL("reset left bucket %u at %llu", i, (unsigned long long)h.counts[i]);
    rb_hist_record(&h, 7);
    if (rb_hist_percentile(&h, 50.0) != 7 || h.lo != 7 || h.hi != 7)
        FAIL("record after reset");
    if (rb_hist_init(&bad, 0, 10) == 0 || rb_hist_init(&bad, 8, 8) == 0 || rb_hist_init(&bad, 5, 64) == 0)
        FAIL("init must refuse bits 0, top <= bits, top > 63");
    rb_hist_free(&h);
    rb_hist_free(&g);
    return 0;
}

int main(void)
{
    static const unsigned layouts[][2] = {{1, 2}, {1, 20}, {3, 30}, {5, 44}, {7, 40}, {5, 63}, {14, 20}};
    for (size_t i = 0; i < sizeof(layouts) / sizeof(layouts[0]); i++)
        if (check_layout(layouts[i][0], layouts[i][1]))
            return 1;
    if (check_counts())
        return 1;
    printf("histogram: ok\n");
    return 0;
}
