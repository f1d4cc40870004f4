# cython: language_level=3
"""crc32c: the CRC-32C (Castagnoli) checksum of a buffer, over csrc/rb_crc32c.h."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint32_t

from ringbus._core.rb_crc32c cimport rb_crc32c

cdef enum:
    NOGIL_MIN = 64 * 1024  # below this, releasing the GIL costs more than the checksum


def crc32c(data, value=0):
    """Return the CRC-32C of data, continuing from value.

    Parameters
    ----------
    data : bytes-like
        Any C-contiguous buffer (bytes, bytearray, memoryview, numpy array);
        its raw bytes are checksummed.
    value : int
        The checksum of the data before this piece (0 to start), so that
        ``crc32c(b, crc32c(a)) == crc32c(a + b)``.

    Returns
    -------
    int
        The checksum, 0 <= result < 2**32.
    """
    cdef Py_buffer view
    cdef uint32_t crc
    cdef long long start
    if type(value) is not int:
        value = PyNumber_Index(value)  # a float is refused, as by operator.index
    try:
        start = value
    except OverflowError:
        start = -1
    if start < 0 or start > 0xFFFFFFFF:
        raise ValueError(f"value must be a CRC-32C between 0 and 2**32 - 1, got {value!r}")
    crc = <uint32_t>start
    if isinstance(data, str):
        raise TypeError("data must be a bytes-like buffer, not str: encode it first")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if view.len >= NOGIL_MIN:
            with nogil:
                crc = rb_crc32c(crc, view.buf, <size_t>view.len)
        else:
            crc = rb_crc32c(crc, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return crc
