/* rb_crc32c.h - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the
   SSE4.2 crc32 instruction where the CPU has it, slice-by-8 tables elsewhere.
   Header-only C11; no Python in here.

   rb_crc32c(0, data, len) is the standard CRC-32C (init and final xor
   0xFFFFFFFF are applied inside), and results chain:
   rb_crc32c(rb_crc32c(0, a, na), b, nb) == rb_crc32c(0, a + b, na + nb). */
#ifndef RB_CRC32C_H
#define RB_CRC32C_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "rb_common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#  define RB_CRC32C_HW 1
#  include <nmmintrin.h>
#else
#  define RB_CRC32C_HW 0
#endif

#define RB_CRC32C_POLY 0x82F63B78u

/* Little-endian loads byte by byte: one mov on x86, and right on big-endian hosts too. */
static inline uint32_t rb_crc32c__le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* The slice-by-8 tables, built on first use. Several threads may arrive at
   once (the callers release the GIL): one builds, the others wait for it. */
static inline const uint32_t (*rb_crc32c__tables(void))[256]
{
    static uint32_t table[8][256];
    static _Atomic int state;  /* 0 unbuilt, 1 being built, 2 ready */
    if (RB_LIKELY(atomic_load_explicit(&state, memory_order_acquire) == 2))
        return (const uint32_t (*)[256])table;
    int expected = 0;
    if (atomic_compare_exchange_strong_explicit(&state, &expected, 1, memory_order_acquire,
                                                memory_order_acquire)) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? (c >> 1) ^ RB_CRC32C_POLY : c >> 1;
            table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
            for (int t = 1; t < 8; t++)
                table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
        atomic_store_explicit(&state, 2, memory_order_release);
    } else {
        /* another thread is building: a few microseconds, once per process */
        while (atomic_load_explicit(&state, memory_order_acquire) != 2)
            ;
    }
    return (const uint32_t (*)[256])table;
}

/* Table path on the raw (pre-inverted) register. */
static inline uint32_t rb_crc32c__sw(uint32_t crc, const unsigned char *p, size_t len)
{
    const uint32_t (*t)[256] = rb_crc32c__tables();
    while (len && ((uintptr_t)p & 7)) {
        crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint32_t lo = rb_crc32c__le32(p) ^ crc;
        uint32_t hi = rb_crc32c__le32(p + 4);
        crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24]
            ^ t[3][hi & 0xFF] ^ t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if RB_CRC32C_HW
__attribute__((target("sse4.2")))
static inline uint32_t rb_crc32c__hw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = _mm_crc32_u64(c, word);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return (uint32_t)c;
}
#endif

/* 1 when the hardware path is in use. Asked of the CPU once; a race only
   asks twice and stores the same answer. */
static inline int rb_crc32c_hw_available(void)
{
#if RB_CRC32C_HW
    static _Atomic int cached = -1;
    int have = atomic_load_explicit(&cached, memory_order_relaxed);
    if (RB_UNLIKELY(have < 0)) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("sse4.2") ? 1 : 0;
        atomic_store_explicit(&cached, have, memory_order_relaxed);
    }
    return have;
#else
    return 0;
#endif
}

/* The table path alone, whatever the CPU: for tests that compare the two. */
static inline uint32_t rb_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    return ~rb_crc32c__sw(~crc, (const unsigned char *)data, len);
}

static inline uint32_t rb_crc32c(uint32_t crc, const void *data, size_t len)
{
#if RB_CRC32C_HW
    if (RB_LIKELY(rb_crc32c_hw_available()))
        return ~rb_crc32c__hw(~crc, (const unsigned char *)data, len);
#endif
    return rb_crc32c_sw(crc, data, len);
}

#endif /* RB_CRC32C_H */
