/* Stress test of rb_ring.h without Python: 4 producers and 4 consumers move
   items through a small ring with the lock-free (CAS) entry points, single
   and batched; every item must arrive exactly once. Built and run by
   tests/test_csrc.py, under ThreadSanitizer and AddressSanitizer. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include "rb_ring.h"
#include "rb_wait.h"

#define PRODUCERS 4
#define CONSUMERS 4
#define PER_PRODUCER 200000
#define TOTAL ((size_t)PRODUCERS * PER_PRODUCER)
#define BATCH 16

static rb_ring ring;
static rb_event not_empty, not_full;
static _Atomic size_t consumed;
static _Atomic unsigned char *seen;
static _Atomic int failures;
static int64_t give_up_at; /* a lost item must fail the test, not hang it */

static int out_of_time(void)
{
    return rb_monotonic_ns() > give_up_at;
}

static void *produce(void *arg)
{
    size_t id = (size_t)arg;
    size_t next = 0;
    void *batch[BATCH];
    while (next < PER_PRODUCER && !out_of_time()) {
        size_t want = 1;
        if (id % 2 == 1) { /* odd producers push in batches */
            want = PER_PRODUCER - next < BATCH ? PER_PRODUCER - next : BATCH;
            for (size_t i = 0; i < want; i++)
                batch[i] = (void *)(uintptr_t)(id * PER_PRODUCER + next + i + 1);
        }
        uint32_t key = rb_event_prepare(&not_full);
        size_t pushed = id % 2 == 1
            ? rb_ring_try_push_many(&ring, batch, want)
            : (size_t)rb_ring_try_push(&ring, (void *)(uintptr_t)(id * PER_PRODUCER + next + 1));
        if (pushed) {
            rb_event_cancel(&not_full);
            next += pushed;
            rb_event_notify(&not_empty, 0);
        } else {
            rb_event_wait(&not_full, key, 10000000 /* 10 ms */, 0);
        }
    }
    return NULL;
}

static void take(void *item)
{
    size_t value = (size_t)(uintptr_t)item;
    if (value == 0 || value > TOTAL || atomic_fetch_add(&seen[value - 1], 1) != 0)
        atomic_fetch_add(&failures, 1);
    atomic_fetch_add(&consumed, 1);
}

static void *consume(void *arg)
{
    size_t id = (size_t)arg;
    void *batch[BATCH];
    while (atomic_load(&consumed) < TOTAL && !out_of_time()) {
        uint32_t key = rb_event_prepare(&not_empty);
        size_t got;
        if (id % 2 == 1) {
            got = rb_ring_try_pop_many(&ring, batch, BATCH);
            for (size_t i = 0; i < got; i++)
                take(batch[i]);
        } else {
            void *item;
            got = (size_t)rb_ring_try_pop(&ring, &item);
            if (got)
                take(item);
        }
        if (got) {
            rb_event_cancel(&not_empty);
            rb_event_notify(&not_full, 0);
        } else {
            rb_event_wait(&not_empty, key, 10000000, 0);
        }
    }
    return NULL;
}

int main(void)
{
    pthread_t threads[PRODUCERS + CONSUMERS];
    seen = calloc(TOTAL, 1);
    if (seen == NULL || rb_ring_init(&ring, 100) != 0) { /* 100: not a power of two on purpose */
        fprintf(stderr, "allocation failed\n");
        return 2;
    }
    rb_event_init(&not_empty);
    rb_event_init(&not_full);
    give_up_at = rb_monotonic_ns() + (int64_t)120 * 1000000000;
    for (size_t i = 0; i < CONSUMERS; i++)
        pthread_create(&threads[i], NULL, consume, (void *)i);
    for (size_t i = 0; i < PRODUCERS; i++)
        pthread_create(&threads[CONSUMERS + i], NULL, produce, (void *)i);
    for (size_t i = 0; i < PRODUCERS + CONSUMERS; i++)
        pthread_join(threads[i], NULL);
    size_t missing = 0;
    for (size_t i = 0; i < TOTAL; i++)
        missing += atomic_load(&seen[i]) == 0;
    size_t left = rb_ring_size(&ring);
    rb_ring_free(&ring);
    free((void *)seen);
    printf("moved %zu items: %d duplicated or invalid, %zu missing, %zu left in ring\n",
           (size_t)atomic_load(&consumed), atomic_load(&failures), missing, left);
    return (atomic_load(&failures) || missing || left) ? 1 : 0;
}
