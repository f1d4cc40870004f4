# Blocking helpers shared by the native queues: timeout checking and a GIL-free
# sleep on an event count that still answers Ctrl-C.
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR
from libc.math cimport isnan
from libc.stdint cimport int64_t, uint32_t

from ringbus._core.rb_wait cimport rb_event, rb_event_cancel, rb_event_wait, rb_monotonic_ns


cdef inline int64_t deadline_ns(object timeout) except -2:
    """Absolute monotonic deadline for a timeout in seconds; -1 for None (wait forever)."""
    cdef double seconds
    if timeout is None:
        return -1
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be a number of seconds or None, got {type(timeout).__name__}")
    seconds = timeout
    if isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
    if seconds > 9.0e9:  # ~285 years: treat as no limit rather than overflow
        return -1
    return rb_monotonic_ns() + <int64_t>(seconds * 1e9)


cdef inline int sleep_until(rb_event *event, uint32_t key, int64_t deadline) except -1:
    """Sleep without the GIL until notified or the deadline; 1 woken, 0 timed out.

    Ends the wait begun by rb_event_prepare. Runs pending signal handlers, so
    KeyboardInterrupt reaches a thread blocked in get() or put().
    """
    cdef int64_t remaining = -1
    cdef int rc
    if deadline >= 0:
        remaining = deadline - rb_monotonic_ns()
        if remaining <= 0:
            rb_event_cancel(event)
            return 0
    with nogil:
        rc = rb_event_wait(event, key, remaining, 0)
    if rc == EINTR:
        PyErr_CheckSignals()
    return 1


cdef inline Py_ssize_t checked_count(object value, str name, Py_ssize_t minimum=0) except -1:
    """An item count >= minimum, or a clear error naming the argument."""
    cdef Py_ssize_t n
    try:
        n = value.__index__()
    except (AttributeError, TypeError):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    except OverflowError:
        raise OverflowError(f"{name} does not fit in a C ssize_t, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n
