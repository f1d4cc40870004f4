# Thin declarations of csrc/rb_ring.h (lock-free bounded MPMC ring of pointers).
cdef extern from "rb_ring.h" nogil:
    ctypedef struct rb_ring:
        size_t capacity

    int rb_ring_init(rb_ring *r, size_t capacity)
    void rb_ring_free(rb_ring *r)
    int rb_ring_try_push(rb_ring *r, void *item)
    int rb_ring_try_pop(rb_ring *r, void **out)
    int rb_ring_push_locked(rb_ring *r, void *item)
    int rb_ring_pop_locked(rb_ring *r, void **out)
    size_t rb_ring_try_push_many(rb_ring *r, void **items, size_t n)
    size_t rb_ring_try_pop_many(rb_ring *r, void **out, size_t n)
    size_t rb_ring_size(rb_ring *r)
