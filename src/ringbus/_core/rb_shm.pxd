# Thin declarations of csrc/rb_shm.h (SPSC ring of byte records in shared memory).
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

cdef extern from "rb_shm.h" nogil:
    ctypedef struct rb_shm:
        uint64_t capacity
        int32_t creator_pid
        int32_t sender_pid       # _Atomic in C; plain loads/stores are atomic for aligned int32
        int32_t receiver_pid
        uint32_t sender_closed
        uint32_t receiver_closed

    uint64_t rb_shm_max_message(const rb_shm *s)
    uint64_t rb_shm_mapping_size(uint64_t capacity)
    void rb_shm_init(rb_shm *s, uint64_t capacity, int32_t pid)
    int rb_shm_check(const rb_shm *s, uint64_t mapped)
    size_t rb_shm_send_batch(rb_shm *s, const void **bufs, const uint64_t *lens, size_t n)
    int rb_shm_peek(rb_shm *s, const char **payload, uint64_t *length)
    void rb_shm_release(rb_shm *s, uint64_t length)
    uint64_t rb_shm_used(rb_shm *s)
    int rb_shm_wait_readable(rb_shm *s, int64_t spin_ns, int64_t timeout_ns)
    int rb_shm_wait_writable(rb_shm *s, uint64_t length, int64_t spin_ns, int64_t timeout_ns)
    void rb_shm_close_side(rb_shm *s, int sender)
