/* rb_heap.h - binary max-heap of pointers keyed by (priority, insertion seq):
   the highest priority comes out first, and among equal priorities the one
   inserted first. Growable up to a bound. Not thread-safe by itself: the
   caller holds a lock (the Python binding holds the GIL). No Python in here. */
#ifndef RB_HEAP_H
#define RB_HEAP_H

#include <stdint.h>
#include <stdlib.h>
#include "rb_common.h"

typedef struct {
    int64_t priority;
    uint64_t seq;
    void *item;
} rb_heap_entry;

typedef struct {
    rb_heap_entry *entries;
    size_t size;
    size_t allocated;
    size_t capacity;     /* most entries ever held; SIZE_MAX for unbounded */
    uint64_t next_seq;
} rb_heap;

#define RB_HEAP_INITIAL 64

/* capacity 0 means unbounded. Returns 0, or -1 when memory is short. */
static inline int rb_heap_init(rb_heap *h, size_t capacity)
{
    h->capacity = capacity ? capacity : SIZE_MAX;
    h->allocated = h->capacity < RB_HEAP_INITIAL ? h->capacity : RB_HEAP_INITIAL;
    h->entries = (rb_heap_entry *)malloc(h->allocated * sizeof(rb_heap_entry));
    h->size = 0;
    h->next_seq = 0;
    return h->entries ? 0 : -1;
}

static inline void rb_heap_free(rb_heap *h)
{
    free(h->entries);
    h->entries = NULL;
    h->size = h->allocated = 0;
}

/* Does a come out before b? */
static inline int rb_heap_before(const rb_heap_entry *a, const rb_heap_entry *b)
{
    return a->priority > b->priority || (a->priority == b->priority && a->seq < b->seq);
}

static inline int rb_heap_grow(rb_heap *h)
{
    size_t want = h->allocated * 2;
    if (want > h->capacity || want < h->allocated)
        want = h->capacity;
    if (want > SIZE_MAX / sizeof(rb_heap_entry))
        return -1;
    rb_heap_entry *e = (rb_heap_entry *)realloc(h->entries, want * sizeof(rb_heap_entry));
    if (e == NULL)
        return -1;
    h->entries = e;
    h->allocated = want;
    return 0;
}

/* 1 when pushed, 0 when at capacity, -1 when memory is short. */
static inline int rb_heap_push(rb_heap *h, void *item, int64_t priority)
{
    if (RB_UNLIKELY(h->size >= h->capacity))
        return 0;
    if (RB_UNLIKELY(h->size == h->allocated) && rb_heap_grow(h) < 0)
        return -1;
    rb_heap_entry e = {priority, h->next_seq++, item};
    rb_heap_entry *a = h->entries;
    size_t i = h->size++;
    /* sift up: move parents down into the hole until e fits */
    while (i > 0) {
        size_t parent = (i - 1) >> 1;
        if (!rb_heap_before(&e, &a[parent]))
            break;
        a[i] = a[parent];
        i = parent;
    }
    a[i] = e;
    return 1;
}

/* 1 and *out set when popped, 0 when empty. */
static inline int rb_heap_pop(rb_heap *h, void **out)
{
    if (RB_UNLIKELY(h->size == 0))
        return 0;
    rb_heap_entry *a = h->entries;
    *out = a[0].item;
    rb_heap_entry last = a[--h->size];
    size_t n = h->size, i = 0;
    /* sift down: pull the better child up into the hole until last fits */
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && rb_heap_before(&a[child + 1], &a[child]))
            child++;
        if (!rb_heap_before(&a[child], &last))
            break;
        a[i] = a[child];
        i = child;
    }
    if (n > 0)
        a[i] = last;
    return 1;
}

/* Priority of the next entry to come out; call only when size > 0. */
static inline int64_t rb_heap_peek_priority(const rb_heap *h)
{
    RB_ASSERT(h->size > 0);
    return h->entries[0].priority;
}

#endif /* RB_HEAP_H */
