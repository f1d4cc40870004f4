/* rb_crc32c.h: known vectors, chaining, and the hardware path against the
   tables on every length and alignment; threads race to the first use.
   Built and run by tests/test_crc32c.py under AddressSanitizer/UBSan and ThreadSanitizer. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "rb_crc32c.h"

#define THREADS 4

static int failures;

static void expect(const char *what, uint32_t got, uint32_t want)
{
    if (got != want) {
        fprintf(stderr, "%s: got 0x%08X, want 0x%08X\n", what, got, want);
        failures++;
    }
}

static void *first_use(void *arg)
{
    uint32_t *out = (uint32_t *)arg;
    *out = rb_crc32c_sw(0, "123456789", 9);
    return NULL;
}

int main(void)
{
    /* threads first, so that they, not main, race to build the tables */
    pthread_t threads[THREADS];
    uint32_t results[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&threads[i], NULL, first_use, &results[i]) != 0)
            return 2;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        expect("thread", results[i], 0xE3069283u);
    }

    unsigned char zeros[32], ones[32], ascending[32];
    memset(zeros, 0, sizeof zeros);
    memset(ones, 0xFF, sizeof ones);
    for (int i = 0; i < 32; i++)
        ascending[i] = (unsigned char)i;
    uint32_t (*const impls[2])(uint32_t, const void *, size_t) = {rb_crc32c, rb_crc32c_sw};
    for (int k = 0; k < 2; k++) {
        expect("check", impls[k](0, "123456789", 9), 0xE3069283u);
        expect("32 zeros", impls[k](0, zeros, 32), 0x8A9136AAu);
        expect("32 ones", impls[k](0, ones, 32), 0x62A8AB43u);
        expect("ascending", impls[k](0, ascending, 32), 0x46DD794Eu);
        expect("empty", impls[k](0, "", 0), 0);
        expect("chained", impls[k](impls[k](0, "12345", 5), "6789", 4), 0xE3069283u);
    }

    static unsigned char data[4096 + 8];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof data; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (unsigned char)(x >> 16);
    }
    for (size_t align = 0; align < 8; align++)
        for (size_t len = 0; len <= 4096; len += (len < 300 ? 1 : 97)) {
            uint32_t whole = rb_crc32c_sw(0, data + align, len);
            expect("hw vs sw", rb_crc32c(0, data + align, len), whole);
            size_t cut = len / 3;
            expect("split", rb_crc32c(rb_crc32c(0, data + align, cut), data + align + cut, len - cut), whole);
        }

    printf("crc32c: %s (hardware path %s)\n", failures ? "FAILED" : "ok",
           rb_crc32c_hw_available() ? "used" : "not available");
    return failures != 0;
}
