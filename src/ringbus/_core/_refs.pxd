# Moving references out of the native containers without refcount churn.

cdef extern from *:
    """
    static CYTHON_INLINE PyObject *rb_take_reference(void *p) { return (PyObject *)p; }
    """
    # The container held one reference to p; the caller now owns it. Cython
    # treats an extern's returned object as a new reference, which it is.
    object take_reference "rb_take_reference"(void *p)
