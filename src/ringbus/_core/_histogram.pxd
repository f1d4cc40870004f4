from ringbus._core.rb_histogram cimport rb_hist


cdef class Histogram:
    cdef rb_hist _h  # counters (allocated at the first record) and the exact count, sum, min and max

    cdef int _check_compatible(self, Histogram other) except -1
