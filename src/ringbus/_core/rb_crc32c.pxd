# Thin declarations of csrc/rb_crc32c.h (CRC-32C; SSE4.2 where the CPU has it, tables elsewhere).
from libc.stdint cimport uint32_t

cdef extern from "rb_crc32c.h" nogil:
    uint32_t rb_crc32c(uint32_t crc, const void *data, size_t len)
    uint32_t rb_crc32c_sw(uint32_t crc, const void *data, size_t len)
    int rb_crc32c_hw_available()
