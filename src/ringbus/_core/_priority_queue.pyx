# cython: language_level=3
"""PriorityQueue: highest priority first, FIFO among equals, over the heap in csrc/rb_heap.h."""

cimport cython
from cpython.list cimport PyList_New
from cpython.long cimport PyLong_AsLongLong
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from cpython.sequence cimport PySequence_Check, PySequence_Fast, PySequence_Fast_GET_ITEM, PySequence_Fast_GET_SIZE
from libc.stdint cimport int64_t, uint32_t

from ringbus._core._refs cimport take_reference
from ringbus._core._waiting cimport checked_count, deadline_ns, sleep_until
from ringbus._core.rb_heap cimport rb_heap_free, rb_heap_init, rb_heap_pop, rb_heap_push
from ringbus._core.rb_wait cimport rb_event_cancel, rb_event_init, rb_event_notify_locked, rb_event_prepare, rb_event_waiters

from itertools import islice
from types import GenericAlias

from ringbus._core._stats import QueueStatistics
from ringbus.errors import Closed, Empty, Full

cdef extern from "Python.h":
    void PyList_SET_ITEM_STEAL "PyList_SET_ITEM"(object lst, Py_ssize_t i, PyObject *item)


cdef inline int64_t checked_priority(object priority) except? -1:
    """An int64 priority, or a clear error naming the argument."""
    if type(priority) is int:
        try:
            return PyLong_AsLongLong(priority)
        except OverflowError:
            raise OverflowError(f"priority must fit in a signed 64-bit int, got {priority}") from None
    if isinstance(priority, float) or not hasattr(priority, "__index__"):
        raise TypeError(f"priority must be an int, got {type(priority).__name__}")
    return checked_priority(priority.__index__())


@cython.final
cdef class PriorityQueue:
    """A priority queue of Python objects, safe across threads.

    ``get`` returns the item of the highest priority (an int, higher is more
    urgent, default 0); among equal priorities, the one put first.

    Parameters
    ----------
    capacity : int or None
        Most items held at once (>= 1), or None for no bound.
    """

    def __cinit__(self, capacity=None):
        cdef Py_ssize_t n = 0
        if capacity is not None:
            n = checked_count(capacity, "capacity", 1)
            self._bounded = True
        if rb_heap_init(&self._heap, <size_t>n) != 0:
            raise MemoryError("cannot allocate a PriorityQueue")
        self._ready = True
        rb_event_init(&self._not_empty)
        rb_event_init(&self._not_full)

    def __dealloc__(self):
        if self._ready:
            self._drain()
            rb_heap_free(&self._heap)

    __class_getitem__ = classmethod(GenericAlias)

    cdef Py_ssize_t _drain(self) except -1:
        cdef void *p = NULL
        cdef Py_ssize_t n = 0
        while rb_heap_pop(&self._heap, &p):
            Py_DECREF(<object>p)
            n += 1
        return n

    cdef int _push(self, object item, int64_t priority) except -1:
        """1 pushed (the heap now owns a reference), 0 at capacity."""
        cdef int rc = rb_heap_push(&self._heap, <PyObject *>item, priority)
        if rc < 0:
            raise MemoryError("cannot grow the PriorityQueue")
        if rc:
            Py_INCREF(item)
        return rc

    def put(self, item, priority=0, bint block=True, timeout=None):
        """Add item at priority; wait for room if bounded and block, else raise Full."""
        cdef int64_t prio = checked_priority(priority)
        if self._closed:
            raise Closed("put() on a closed PriorityQueue")
        if self._push(item, prio):
            rb_event_notify_locked(&self._not_empty, 0)
            return
        if not block:
            raise Full("PriorityQueue is full")
        self._put_wait(item, prio, deadline_ns(timeout))

    cdef int _put_wait(self, object item, int64_t priority, int64_t deadline) except -1:
        cdef uint32_t key
        while True:
            key = rb_event_prepare(&self._not_full)
            if self._closed:
                rb_event_cancel(&self._not_full)
                raise Closed("PriorityQueue was closed while put() waited")
            if self._push(item, priority):
                rb_event_cancel(&self._not_full)
                rb_event_notify_locked(&self._not_empty, 0)
                return 0
            if not sleep_until(&self._not_full, key, deadline):
                raise Full("PriorityQueue is full: put() timed out")

    def put_nowait(self, item, priority=0):
        """Add item at priority or raise Full at once."""
        return self.put(item, priority, False)

    def get(self, bint block=True, timeout=None):
        """Remove and return the most urgent item; wait if block (up to timeout s), else raise Empty."""
        cdef void *p = NULL
        if rb_heap_pop(&self._heap, &p):
            if self._bounded:
                rb_event_notify_locked(&self._not_full, 0)
            return take_reference(p)
        if self._closed:
            raise Closed("get() on a closed, drained PriorityQueue")
        if not block:
            raise Empty("PriorityQueue is empty")
        return self._get_wait(deadline_ns(timeout))

    cdef object _get_wait(self, int64_t deadline):
        cdef void *p = NULL
        cdef uint32_t key
        while True:
            key = rb_event_prepare(&self._not_empty)
            if rb_heap_pop(&self._heap, &p):
                rb_event_cancel(&self._not_empty)
                if self._bounded:
                    rb_event_notify_locked(&self._not_full, 0)
                return take_reference(p)
            if self._closed:
                rb_event_cancel(&self._not_empty)
                raise Closed("PriorityQueue was closed while get() waited")
            if not sleep_until(&self._not_empty, key, deadline):
                raise Empty("PriorityQueue is empty: get() timed out")

    def get_nowait(self):
        """Remove and return the most urgent item or raise Empty at once."""
        return self.get(False)

    def put_many(self, items, priority=0):
        """Add as many of a sequence's items as fit, all at one priority, without blocking.

        Returns how many were taken: the caller still owns ``items[n:]``.
        """
        cdef int64_t prio = checked_priority(priority)
        if self._closed:
            raise Closed("put_many() on a closed PriorityQueue")
        if not PySequence_Check(items):
            raise TypeError(f"items must be a sequence (list, tuple, ...), got {type(items).__name__}")
        if self._bounded and type(items) is not list and type(items) is not tuple:
            # copy no more than fits: put_many(range(10**12)) must not build the whole list
            items = list(islice(items, <Py_ssize_t>(self._heap.capacity - self._heap.size)))
        seq = PySequence_Fast(items, "items must be a sequence")
        cdef Py_ssize_t i, total = PySequence_Fast_GET_SIZE(seq)
        for i in range(total):
            if not self._push(<object>PySequence_Fast_GET_ITEM(seq, i), prio):
                break
        else:
            i = total
        if i:
            rb_event_notify_locked(&self._not_empty, 0)
        return i

    def get_many(self, max_items):
        """Remove and return up to max_items, most urgent first, without blocking.

        Returns an empty list when empty; raises Closed when closed and drained.
        """
        cdef Py_ssize_t want = checked_count(max_items, "max_items")
        cdef Py_ssize_t i
        cdef void *p = NULL
        if want > <Py_ssize_t>self._heap.size:
            want = <Py_ssize_t>self._heap.size
        if self._heap.size == 0 and self._closed:
            raise Closed("get_many() on a closed, drained PriorityQueue")
        out = PyList_New(want)
        for i in range(want):
            rb_heap_pop(&self._heap, &p)  # cannot fail: the GIL keeps size stable
            PyList_SET_ITEM_STEAL(out, i, <PyObject *>p)
        if want and self._bounded:
            rb_event_notify_locked(&self._not_full, 0)
        return out

    def clear(self):
        """Drop every item held (releasing the references); returns how many."""
        cdef Py_ssize_t n = self._drain()
        if n and self._bounded:
            rb_event_notify_locked(&self._not_full, 0)
        return n

    def close(self):
        """Refuse further puts and wake every waiter; getters drain, then see Closed."""
        self._closed = True
        rb_event_notify_locked(&self._not_empty, 0)
        rb_event_notify_locked(&self._not_full, 0)

    @property
    def closed(self):
        """True once close() was called."""
        return self._closed

    @property
    def capacity(self):
        """Most items held at once, or None when unbounded."""
        return self._heap.capacity if self._bounded else None

    def __len__(self):
        return self._heap.size

    def empty(self):
        """True when no item is held."""
        return self._heap.size == 0

    def full(self):
        """True when bounded and at capacity."""
        return self._bounded and self._heap.size >= self._heap.capacity

    def qsize(self):
        """Items held right now (queue.Queue spelling of len())."""
        return self._heap.size

    def statistics(self):
        """A snapshot: size, capacity, waiting getters and putters, closed."""
        return QueueStatistics(
            size=self._heap.size,
            capacity=self.capacity,
            getters_waiting=rb_event_waiters(&self._not_empty),
            putters_waiting=rb_event_waiters(&self._not_full),
            closed=self._closed,
        )

    def __repr__(self):
        state = " closed" if self._closed else ""
        return f"<ringbus.PriorityQueue size={self._heap.size} capacity={self.capacity}{state}>"
