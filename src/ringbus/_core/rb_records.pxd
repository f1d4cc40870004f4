# Thin declarations of csrc/rb_records.h (ring of fixed-size records moved with memcpy).
cdef extern from "rb_records.h" nogil:
    ctypedef struct rb_records:
        size_t itemsize
        size_t capacity
        size_t size

    int rb_records_init(rb_records *r, size_t itemsize, size_t capacity)
    void rb_records_free(rb_records *r)
    size_t rb_records_write(rb_records *r, const void *src, size_t n)
    size_t rb_records_read(rb_records *r, void *dst, size_t n)
    void rb_records_clear(rb_records *r)
