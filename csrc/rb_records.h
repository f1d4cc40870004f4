/* rb_records.h - a ring of fixed-size records in one contiguous buffer,
   moved in whole runs with memcpy (at most two per call: before and after
   the wrap). Not thread-safe by itself: the Python binding holds the GIL.
   No Python in here. */
#ifndef RB_RECORDS_H
#define RB_RECORDS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "rb_common.h"

typedef struct {
    char *data;
    size_t itemsize;   /* bytes per record */
    size_t capacity;   /* records */
    size_t head;       /* index of the oldest record */
    size_t size;       /* records held */
} rb_records;

static inline int rb_records_init(rb_records *r, size_t itemsize, size_t capacity)
{
    if (itemsize == 0 || capacity == 0 || capacity > SIZE_MAX / itemsize)
        return -1;
    r->data = (char *)malloc(itemsize * capacity);
    r->itemsize = itemsize;
    r->capacity = capacity;
    r->head = r->size = 0;
    return r->data ? 0 : -1;
}

static inline void rb_records_free(rb_records *r)
{
    free(r->data);
    r->data = NULL;
}

/* Copies in as many of n records as fit; returns how many. */
static inline size_t rb_records_write(rb_records *r, const void *src, size_t n)
{
    size_t room = r->capacity - r->size;
    if (n > room)
        n = room;
    size_t tail = r->head + r->size;
    if (tail >= r->capacity)
        tail -= r->capacity;
    size_t first = r->capacity - tail;
    if (first > n)
        first = n;
    memcpy(r->data + tail * r->itemsize, src, first * r->itemsize);
    if (n > first)
        memcpy(r->data, (const char *)src + first * r->itemsize, (n - first) * r->itemsize);
    r->size += n;
    return n;
}

/* Copies out up to n records, oldest first; returns how many. */
static inline size_t rb_records_read(rb_records *r, void *dst, size_t n)
{
    if (n > r->size)
        n = r->size;
    size_t first = r->capacity - r->head;
    if (first > n)
        first = n;
    memcpy(dst, r->data + r->head * r->itemsize, first * r->itemsize);
    if (n > first)
        memcpy((char *)dst + first * r->itemsize, r->data, (n - first) * r->itemsize);
    r->head += n;
    if (r->head >= r->capacity)
        r->head -= r->capacity;
    r->size -= n;
    if (r->size == 0)
        r->head = 0;  /* keeps the next run in one piece */
    return n;
}

/* Drops every record. */
static inline void rb_records_clear(rb_records *r)
{
    r->head = r->size = 0;
}

#endif /* RB_RECORDS_H */
