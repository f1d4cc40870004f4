/* rb_common.h - shared macros for the ringbus C core: branch hints, debug checks, cache-line padding. */
#ifndef RB_COMMON_H
#define RB_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#  define RB_LIKELY(x)   __builtin_expect(!!(x), 1)
#  define RB_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#  define RB_LIKELY(x)   (x)
#  define RB_UNLIKELY(x) (x)
#endif

/* Checks that cost cycles on the hot path compile out of release builds;
   build with RINGBUS_DEBUG=1 (setup.py) to turn them into aborts. */
#ifdef RINGBUS_DEBUG
#  include <stdio.h>
#  include <stdlib.h>
#  define RB_ASSERT(cond) do { if (!(cond)) { \
        fprintf(stderr, "ringbus: assertion failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
        abort(); } } while (0)
#else
#  define RB_ASSERT(cond) ((void)0)
#endif

/* Producer and consumer counters live on separate cache lines so that
   threads on different cores do not invalidate each other's line. */
#define RB_CACHE_LINE 64
#define RB_PAD(name, used) char name[RB_CACHE_LINE - (used)]

/* Smallest power of two >= n (n >= 1); 0 when it would overflow. */
static inline size_t rb_next_pow2(size_t n)
{
    size_t p = 1;
    while (p < n) {
        if (p > (SIZE_MAX >> 1))
            return 0;
        p <<= 1;
    }
    return p;
}

#endif /* RB_COMMON_H */
