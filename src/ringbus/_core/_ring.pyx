# cython: language_level=3
"""Ring: a bounded FIFO of Python objects over the lock-free ring in csrc/rb_ring.h."""

cimport cython
from cpython.list cimport PyList_New
from cpython.ref cimport PyObject, Py_DECREF, Py_INCREF
from cpython.sequence cimport PySequence_Check, PySequence_Fast, PySequence_Fast_GET_SIZE, PySequence_Fast_ITEMS
from libc.stdint cimport int64_t, uint32_t

from ringbus._core._refs cimport take_reference
from ringbus._core._waiting cimport checked_count, deadline_ns, sleep_until
from ringbus._core.rb_ring cimport rb_ring_free, rb_ring_init, rb_ring_size, rb_ring_pop_locked, rb_ring_push_locked, rb_ring_try_pop_many, rb_ring_try_push_many
from ringbus._core.rb_wait cimport rb_event_cancel, rb_event_init, rb_event_notify_locked, rb_event_prepare, rb_event_waiters

from itertools import islice
from types import GenericAlias

from ringbus._core._stats import QueueStatistics
from ringbus.errors import Closed, Empty, Full

cdef extern from "Python.h":
    void Py_SET_SIZE(object o, Py_ssize_t size)


@cython.final
cdef class Ring:
    """A bounded FIFO of Python objects, safe across threads.

    Parameters
    ----------
    capacity : int
        Most items held at once (>= 1).

    Notes
    -----
    Blocking calls sleep with the GIL released and wake on the opposite
    operation or on ``close()``; they never spin. Methods match
    ``queue.Queue``, and ``Full``/``Empty`` subclass its exceptions.
    A ring that holds a reference to itself (directly or through its items)
    is not found by the cycle collector: ``clear()`` or ``close()`` and drain it.
    """

    def __cinit__(self, capacity):
        cdef Py_ssize_t n = checked_count(capacity, "capacity", 1)
        if rb_ring_init(&self._ring, <size_t>n) != 0:
            raise MemoryError(f"cannot allocate a Ring of capacity {n}")
        self._ready = True
        rb_event_init(&self._not_empty)
        rb_event_init(&self._not_full)

    def __dealloc__(self):
        if self._ready:
            self._drain()
            rb_ring_free(&self._ring)

    __class_getitem__ = classmethod(GenericAlias)

    cdef Py_ssize_t _drain(self) except -1:
        cdef void *p
        cdef Py_ssize_t n = 0
        while rb_ring_pop_locked(&self._ring, &p):
            Py_DECREF(<object>p)
            n += 1
        return n

    def put(self, item, bint block=True, timeout=None):
        """Append item; wait for room if block (up to timeout s), else raise Full."""
        if self._closed:
            raise Closed("put() on a closed Ring")
        Py_INCREF(item)
        if rb_ring_push_locked(&self._ring, <PyObject *>item):
            rb_event_notify_locked(&self._not_empty, 0)
            return
        if not block:
            Py_DECREF(item)
            raise Full("Ring is full")
        try:
            self._put_wait(item, deadline_ns(timeout))
        except BaseException:
            Py_DECREF(item)
            raise

    cdef int _put_wait(self, object item, int64_t deadline) except -1:
        cdef uint32_t key
        while True:
            key = rb_event_prepare(&self._not_full)
            if self._closed:
                rb_event_cancel(&self._not_full)
                raise Closed("Ring was closed while put() waited")
            if rb_ring_push_locked(&self._ring, <PyObject *>item):
                rb_event_cancel(&self._not_full)
                rb_event_notify_locked(&self._not_empty, 0)
                return 0
            if not sleep_until(&self._not_full, key, deadline):
                raise Full("Ring is full: put() timed out")

    def put_nowait(self, item):
        """Append item or raise Full at once."""
        return self.put(item, False)

    def get(self, bint block=True, timeout=None):
        """Remove and return the oldest item; wait if block (up to timeout s), else raise Empty.

        A closed ring still hands out what it holds, then raises Closed.
        """
        cdef void *p
        if rb_ring_pop_locked(&self._ring, &p):
            rb_event_notify_locked(&self._not_full, 0)
            return take_reference(p)
        if self._closed:
            raise Closed("get() on a closed, drained Ring")
        if not block:
            raise Empty("Ring is empty")
        return self._get_wait(deadline_ns(timeout))

    cdef object _get_wait(self, int64_t deadline):
        cdef void *p
        cdef uint32_t key
        while True:
            key = rb_event_prepare(&self._not_empty)
            if rb_ring_pop_locked(&self._ring, &p):
                rb_event_cancel(&self._not_empty)
                rb_event_notify_locked(&self._not_full, 0)
                return take_reference(p)
            if self._closed:
                rb_event_cancel(&self._not_empty)
                raise Closed("Ring was closed while get() waited")
            if not sleep_until(&self._not_empty, key, deadline):
                raise Empty("Ring is empty: get() timed out")

    def get_nowait(self):
        """Remove and return the oldest item or raise Empty at once."""
        return self.get(False)

    def put_many(self, items):
        """Append as many of a sequence's items as fit, in order, without blocking.

        Returns how many were taken: the caller still owns ``items[n:]``.
        """
        if self._closed:
            raise Closed("put_many() on a closed Ring")
        if not PySequence_Check(items):
            raise TypeError(f"items must be a sequence (list, tuple, ...), got {type(items).__name__}")
        if type(items) is not list and type(items) is not tuple:
            # copy no more than fits: put_many(range(10**12)) must not build the whole list
            items = list(islice(items, <Py_ssize_t>(self._ring.capacity - rb_ring_size(&self._ring))))
        seq = PySequence_Fast(items, "items must be a sequence")
        cdef Py_ssize_t i, pushed, total = PySequence_Fast_GET_SIZE(seq)
        cdef PyObject **objects = PySequence_Fast_ITEMS(seq)
        cdef Py_ssize_t room = <Py_ssize_t>(self._ring.capacity - rb_ring_size(&self._ring))
        if total > room:
            total = room
        # the ring's references exist before a consumer can see the items
        for i in range(total):
            Py_INCREF(<object>objects[i])
        pushed = <Py_ssize_t>rb_ring_try_push_many(&self._ring, <void **>objects, <size_t>total)
        for i in range(pushed, total):
            Py_DECREF(<object>objects[i])
        if pushed:
            rb_event_notify_locked(&self._not_empty, 0)
        return pushed

    def get_many(self, max_items):
        """Remove and return up to max_items of the oldest items, without blocking.

        Returns an empty list when the ring is empty; raises Closed when it is
        closed and drained.
        """
        cdef Py_ssize_t want = checked_count(max_items, "max_items")
        cdef Py_ssize_t have = <Py_ssize_t>rb_ring_size(&self._ring)
        cdef Py_ssize_t got
        if want > have:
            want = have
        if have == 0 and self._closed:
            raise Closed("get_many() on a closed, drained Ring")
        out = PyList_New(want)
        # popped references move straight into the list's slots
        got = <Py_ssize_t>rb_ring_try_pop_many(&self._ring, <void **>PySequence_Fast_ITEMS(out), <size_t>want)
        if got < want:  # only a consumer outside the GIL could race us here
            Py_SET_SIZE(out, got)
        if want:
            rb_event_notify_locked(&self._not_full, 0)
        return out

    def clear(self):
        """Drop every item held (releasing the references); returns how many."""
        cdef Py_ssize_t n = self._drain()
        if n:
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
        """Most items held at once."""
        return self._ring.capacity

    def __len__(self):
        return rb_ring_size(&self._ring)

    def empty(self):
        """True when no item is held (a snapshot, as queue.Queue.empty)."""
        return rb_ring_size(&self._ring) == 0

    def full(self):
        """True when the ring is at capacity (a snapshot, as queue.Queue.full)."""
        return rb_ring_size(&self._ring) >= self._ring.capacity

    def qsize(self):
        """Items held right now (queue.Queue spelling of len())."""
        return rb_ring_size(&self._ring)

    def statistics(self):
        """A snapshot: size, capacity, waiting getters and putters, closed."""
        return QueueStatistics(
            size=rb_ring_size(&self._ring),
            capacity=self._ring.capacity,
            getters_waiting=rb_event_waiters(&self._not_empty),
            putters_waiting=rb_event_waiters(&self._not_full),
            closed=self._closed,
        )

    def __repr__(self):
        state = " closed" if self._closed else ""
        return f"<ringbus.Ring size={len(self)} capacity={self._ring.capacity}{state}>"
