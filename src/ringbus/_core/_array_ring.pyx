# cython: language_level=3
"""ArrayRing: a ring of fixed-size numpy records in native memory, moved in runs with memcpy."""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer

from ringbus._core._waiting cimport checked_count
from ringbus._core.rb_records cimport rb_records_free, rb_records_clear, rb_records_init, rb_records_read, rb_records_write

import numpy

from ringbus._core._stats import QueueStatistics
from ringbus.errors import Closed


cdef object checked_record_dtype(object dtype):
    try:
        dt = numpy.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: {exc}") from None
    if dt.hasobject:
        raise TypeError(f"dtype must hold plain data, not Python objects: {dt}")
    if dt.subdtype is not None:
        raise ValueError(f"dtype must be a record type, not a sub-array {dt}; wrap it in a structured field")
    if dt.itemsize == 0:
        raise ValueError(f"dtype must have a non-zero size: {dt}")
    return dt


@cython.final
cdef class ArrayRing:
    """A bounded ring of numpy records of one dtype, stored contiguously.

    ``put_many`` copies a 1-d array of records in, ``get_many`` copies the
    oldest records out into a new array (or ``out``): at most two memcpy
    calls each, whatever the run length. Safe across threads (the GIL guards
    each call). Neither call blocks.

    Parameters
    ----------
    dtype : numpy dtype or anything numpy.dtype accepts
        The record type (float64, a structured dtype, ...); no object fields.
    capacity : int
        Most records held at once (>= 1).
    """

    def __cinit__(self, dtype, capacity):
        dt = checked_record_dtype(dtype)
        cdef Py_ssize_t n = checked_count(capacity, "capacity", 1)
        if rb_records_init(&self._records, <size_t>dt.itemsize, <size_t>n) != 0:
            raise MemoryError(f"cannot allocate an ArrayRing of {n} records of {dt}")
        self._ready = True
        self._dtype = dt
        self._empty = numpy.empty

    def __dealloc__(self):
        if self._ready:
            rb_records_free(&self._records)

    def put_many(self, records):
        """Copy in as many records (a 1-d array of this dtype) as fit; returns how many.

        The caller still owns ``records[n:]``.
        """
        cdef Py_buffer view
        cdef size_t n
        if self._closed:
            raise Closed("put_many() on a closed ArrayRing")
        if not isinstance(records, numpy.ndarray):
            raise TypeError(f"records must be a numpy.ndarray of dtype {self._dtype}, got {type(records).__name__}")
        if records.dtype != self._dtype:
            raise TypeError(f"records have dtype {records.dtype}, this ArrayRing holds {self._dtype}")
        if records.ndim != 1:
            raise ValueError(f"records must be a 1-d array of records, got shape {records.shape}")
        if not records.flags.c_contiguous:
            # copy only what fits: a strided or broadcast view may be far larger than the ring
            records = numpy.ascontiguousarray(records[:self._records.capacity - self._records.size])
        PyObject_GetBuffer(records, &view, PyBUF_SIMPLE)
        try:
            n = rb_records_write(&self._records, view.buf, <size_t>records.shape[0])
        finally:
            PyBuffer_Release(&view)
        return n

    def get_many(self, max_records, out=None):
        """Copy out up to max_records of the oldest records; returns a 1-d array.

        With ``out`` (a writable, C-contiguous 1-d array of this dtype) the
        records land in its first slots and the filled slice is returned, so a
        steady consumer allocates nothing. Returns an empty array when empty;
        raises Closed when closed and drained.
        """
        cdef Py_buffer view
        cdef Py_ssize_t want = checked_count(max_records, "max_records")
        if want > <Py_ssize_t>self._records.size:
            want = <Py_ssize_t>self._records.size
        if self._records.size == 0 and self._closed:
            raise Closed("get_many() on a closed, drained ArrayRing")
        if out is None:
            out = self._empty(want, self._dtype)
            target = out
        else:
            if not isinstance(out, numpy.ndarray) or out.dtype != self._dtype or out.ndim != 1:
                raise TypeError(f"out must be a 1-d numpy.ndarray of dtype {self._dtype}")
            if not out.flags.c_contiguous:
                raise ValueError("out must be C-contiguous")
            if want > out.shape[0]:
                want = out.shape[0]
            target = out[:want]
        if want:
            PyObject_GetBuffer(target, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                rb_records_read(&self._records, view.buf, <size_t>want)
            finally:
                PyBuffer_Release(&view)
        return target

    def clear(self):
        """Drop every record held; returns how many."""
        cdef size_t n = self._records.size
        rb_records_clear(&self._records)
        return n

    def close(self):
        """Refuse further puts; get_many drains, then raises Closed."""
        self._closed = True

    @property
    def closed(self):
        """True once close() was called."""
        return self._closed

    @property
    def dtype(self):
        """The numpy dtype of every record."""
        return self._dtype

    @property
    def capacity(self):
        """Most records held at once."""
        return self._records.capacity

    def __len__(self):
        return self._records.size

    def statistics(self):
        """A snapshot: size, capacity, closed (nothing ever waits on an ArrayRing)."""
        return QueueStatistics(
            size=self._records.size, capacity=self._records.capacity,
            getters_waiting=0, putters_waiting=0, closed=self._closed,
        )

    def __repr__(self):
        state = " closed" if self._closed else ""
        return f"<ringbus.ArrayRing dtype={self._dtype} size={self._records.size} capacity={self._records.capacity}{state}>"
