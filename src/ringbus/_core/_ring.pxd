from libc.stdint cimport int64_t

from ringbus._core.rb_ring cimport rb_ring
from ringbus._core.rb_wait cimport rb_event


cdef class Ring:
    cdef rb_ring _ring        # the lock-free slots; each holds one owned reference
    cdef rb_event _not_empty  # getters sleep here; put notifies
    cdef rb_event _not_full   # putters sleep here; get notifies
    cdef bint _closed         # set once by close(); read under the GIL
    cdef bint _ready          # _ring was initialised, so __dealloc__ must free it

    cdef Py_ssize_t _drain(self) except -1
    cdef int _put_wait(self, object item, int64_t deadline) except -1
    cdef object _get_wait(self, int64_t deadline)
