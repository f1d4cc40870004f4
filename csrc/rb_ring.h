/* rb_ring.h - lock-free bounded MPMC ring of pointers (Dmitry Vyukov's design:
   one sequence number per slot, producers and consumers each claim a position
   with a CAS). Header-only C11; no Python in here. */
#ifndef RB_RING_H
#define RB_RING_H

#include <stdatomic.h>
#include <stdlib.h>
#include "rb_common.h"

typedef struct {
    _Atomic size_t seq;   /* == position when free for the producer of that position,
                             == position + 1 when it holds that position's item */
    void *item;
} rb_ring_cell;

typedef struct {
    rb_ring_cell *cells;
    size_t mask;          /* slot count - 1; the slot count is a power of two */
    size_t capacity;      /* the bound users asked for, <= slot count */
    RB_PAD(pad0, 3 * sizeof(size_t));
    _Atomic size_t enqueue_pos;
    RB_PAD(pad1, sizeof(size_t));
    _Atomic size_t dequeue_pos;
    RB_PAD(pad2, sizeof(size_t));
} rb_ring;

/* Returns 0, or -1 when capacity is 0 or memory is short. */
static inline int rb_ring_init(rb_ring *r, size_t capacity)
{
    size_t slots = rb_next_pow2(capacity);
    if (capacity == 0 || slots == 0 || slots > SIZE_MAX / sizeof(rb_ring_cell))
        return -1;
    r->cells = (rb_ring_cell *)malloc(slots * sizeof(rb_ring_cell));
    if (r->cells == NULL)
        return -1;
    for (size_t i = 0; i < slots; i++) {
        atomic_init(&r->cells[i].seq, i);
        r->cells[i].item = NULL;
    }
    r->mask = slots - 1;
    r->capacity = capacity;
    atomic_init(&r->enqueue_pos, 0);
    atomic_init(&r->dequeue_pos, 0);
    return 0;
}

static inline void rb_ring_free(rb_ring *r)
{
    free(r->cells);
    r->cells = NULL;
}

/* 1 when pushed, 0 when full. */
static inline int rb_ring_try_push(rb_ring *r, void *item)
{
    size_t pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
    for (;;) {
        /* The slot array may be larger than the requested capacity (it is a
           power of two); this bound keeps the visible capacity exact. A stale
           dequeue_pos only makes the ring look fuller, never overfull. */
        size_t deq = atomic_load_explicit(&r->dequeue_pos, memory_order_acquire);
        if (RB_UNLIKELY(pos - deq >= r->capacity))
            return 0;
        rb_ring_cell *cell = &r->cells[pos & r->mask];
        size_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)pos;
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->enqueue_pos, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                cell->item = item;
                atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
                return 1;
            }
            /* lost the race: pos now holds the current value, retry */
        } else if (dif < 0) {
            return 0;  /* the slot still holds an item a lap behind: full */
        } else {
            pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
        }
    }
}

/* 1 and *out set when popped, 0 when empty. */
static inline int rb_ring_try_pop(rb_ring *r, void **out)
{
    size_t pos = atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed);
    for (;;) {
        rb_ring_cell *cell = &r->cells[pos & r->mask];
        size_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        intptr_t dif = (intptr_t)seq - (intptr_t)(pos + 1);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->dequeue_pos, &pos, pos + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                *out = cell->item;
                cell->item = NULL;
                atomic_store_explicit(&cell->seq, pos + r->mask + 1, memory_order_release);
                return 1;
            }
        } else if (dif < 0) {
            return 0;  /* not yet written: empty */
        } else {
            pos = atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed);
        }
    }
}

/* The same protocol without the CAS, for callers that already serialise every
   producer and consumer with one lock (the Python bindings: the GIL). A CAS
   costs more than the rest of a push; under one lock it buys nothing. */
static inline int rb_ring_push_locked(rb_ring *r, void *item)
{
    size_t pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
    if (RB_UNLIKELY(pos - atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed) >= r->capacity))
        return 0;
    rb_ring_cell *cell = &r->cells[pos & r->mask];
    RB_ASSERT(atomic_load_explicit(&cell->seq, memory_order_relaxed) == pos);
    cell->item = item;
    atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
    atomic_store_explicit(&r->enqueue_pos, pos + 1, memory_order_relaxed);
    return 1;
}

static inline int rb_ring_pop_locked(rb_ring *r, void **out)
{
    size_t pos = atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed);
    if (RB_UNLIKELY(pos == atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed)))
        return 0;
    rb_ring_cell *cell = &r->cells[pos & r->mask];
    RB_ASSERT(atomic_load_explicit(&cell->seq, memory_order_relaxed) == pos + 1);
    *out = cell->item;
    cell->item = NULL;
    atomic_store_explicit(&cell->seq, pos + r->mask + 1, memory_order_release);
    atomic_store_explicit(&r->dequeue_pos, pos + 1, memory_order_relaxed);
    return 1;
}

/* Pushes up to n items in order with one CAS for the whole run; returns how
   many (0 when full). The run is claimed only over slots already free, so a
   slow consumer shortens it rather than making producers wait. */
static inline size_t rb_ring_try_push_many(rb_ring *r, void *const *items, size_t n)
{
    size_t pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
    for (;;) {
        size_t deq = atomic_load_explicit(&r->dequeue_pos, memory_order_acquire);
        size_t used = pos - deq;
        if (RB_UNLIKELY(used >= r->capacity))
            return 0;
        size_t k = r->capacity - used;
        if (k > n)
            k = n;
        size_t i;
        int stale = 0;
        for (i = 0; i < k; i++) {
            size_t seq = atomic_load_explicit(&r->cells[(pos + i) & r->mask].seq, memory_order_acquire);
            if (seq != pos + i) {
                stale = (intptr_t)(seq - (pos + i)) > 0;  /* another producer got there first */
                break;
            }
        }
        if (stale || i == 0) {
            if (!stale)
                return 0;
            pos = atomic_load_explicit(&r->enqueue_pos, memory_order_relaxed);
            continue;
        }
        k = i;
        if (!atomic_compare_exchange_weak_explicit(&r->enqueue_pos, &pos, pos + k,
                                                   memory_order_relaxed, memory_order_relaxed))
            continue;
        for (i = 0; i < k; i++) {
            rb_ring_cell *cell = &r->cells[(pos + i) & r->mask];
            cell->item = items[i];
            atomic_store_explicit(&cell->seq, pos + i + 1, memory_order_release);
        }
        return k;
    }
}

/* Pops up to n items, oldest first, with one CAS for the whole run; returns how many. */
static inline size_t rb_ring_try_pop_many(rb_ring *r, void **out, size_t n)
{
    size_t pos = atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed);
    for (;;) {
        size_t i;
        int stale = 0;
        for (i = 0; i < n; i++) {
            size_t seq = atomic_load_explicit(&r->cells[(pos + i) & r->mask].seq, memory_order_acquire);
            if (seq != pos + i + 1) {
                stale = (intptr_t)(seq - (pos + i + 1)) > 0;  /* another consumer got there first */
                break;
            }
        }
        if (stale || i == 0) {
            if (!stale)
                return 0;
            pos = atomic_load_explicit(&r->dequeue_pos, memory_order_relaxed);
            continue;
        }
        size_t k = i;
        if (!atomic_compare_exchange_weak_explicit(&r->dequeue_pos, &pos, pos + k,
                                                   memory_order_relaxed, memory_order_relaxed))
            continue;
        for (i = 0; i < k; i++) {
            rb_ring_cell *cell = &r->cells[(pos + i) & r->mask];
            out[i] = cell->item;
            cell->item = NULL;
            atomic_store_explicit(&cell->seq, pos + i + r->mask + 1, memory_order_release);
        }
        return k;
    }
}

/* Items held right now; exact when no other thread is mid-operation. */
static inline size_t rb_ring_size(rb_ring *r)
{
    size_t deq = atomic_load_explicit(&r->dequeue_pos, memory_order_acquire);
    size_t enq = atomic_load_explicit(&r->enqueue_pos, memory_order_acquire);
    size_t n = enq - deq;
    if ((intptr_t)n < 0)
        return 0;
    return n > r->capacity ? r->capacity : n;
}

#endif /* RB_RING_H */
