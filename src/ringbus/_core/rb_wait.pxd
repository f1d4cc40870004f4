# Thin declarations of csrc/rb_wait.h (event count over a futex).
from libc.stdint cimport int64_t, uint32_t

cdef extern from "rb_wait.h" nogil:
    ctypedef struct rb_event:
        pass

    void rb_event_init(rb_event *e)
    uint32_t rb_event_prepare(rb_event *e)
    void rb_event_cancel(rb_event *e)
    uint32_t rb_event_waiters(rb_event *e)
    int rb_event_wait(rb_event *e, uint32_t key, int64_t timeout_ns, int shared)
    void rb_event_notify(rb_event *e, int shared)
    void rb_event_notify_locked(rb_event *e, int shared)
    int64_t rb_monotonic_ns()
