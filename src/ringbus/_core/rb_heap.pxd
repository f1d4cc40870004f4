# Thin declarations of csrc/rb_heap.h (max-heap keyed by priority, then insertion order).
from libc.stdint cimport int64_t

cdef extern from "rb_heap.h" nogil:
    ctypedef struct rb_heap:
        size_t size
        size_t capacity

    int rb_heap_init(rb_heap *h, size_t capacity)
    void rb_heap_free(rb_heap *h)
    int rb_heap_push(rb_heap *h, void *item, int64_t priority)
    int rb_heap_pop(rb_heap *h, void **out)
