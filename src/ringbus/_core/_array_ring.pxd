from ringbus._core.rb_records cimport rb_records


cdef class ArrayRing:
    cdef rb_records _records  # the contiguous record buffer; the GIL guards it
    cdef object _dtype        # numpy.dtype every record must have
    cdef object _empty        # numpy.empty, looked up once
    cdef bint _closed         # set once by close()
    cdef bint _ready          # _records was initialised, so __dealloc__ must free it
