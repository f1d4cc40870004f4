from libc.stdint cimport int64_t

from ringbus._core.rb_heap cimport rb_heap
from ringbus._core.rb_wait cimport rb_event


cdef class PriorityQueue:
    cdef rb_heap _heap        # entries own one reference each; the GIL guards it
    cdef rb_event _not_empty  # getters sleep here; put notifies
    cdef rb_event _not_full   # putters sleep here (bounded queues only); get notifies
    cdef bint _bounded        # a capacity was given
    cdef bint _closed         # set once by close()
    cdef bint _ready          # _heap was initialised, so __dealloc__ must free it

    cdef Py_ssize_t _drain(self) except -1
    cdef int _push(self, object item, int64_t priority) except -1
    cdef int _put_wait(self, object item, int64_t priority, int64_t deadline) except -1
    cdef object _get_wait(self, int64_t deadline)
