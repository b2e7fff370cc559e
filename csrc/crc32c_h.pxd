# Declarations of csrc/crc32c.h for cimport; link with `# distutils: sources = csrc/crc32c.c`.
from libc.stdint cimport uint32_t


cdef extern from "crc32c.h" nogil:
    uint32_t esc_crc32c(uint32_t crc, const void *data, size_t length)
    uint32_t esc_crc32c_sw(uint32_t crc, const void *data, size_t length)
    uint32_t esc_crc32c_no_fold(uint32_t crc, const void *data, size_t length)
    int esc_crc32c_hw_available()
    int esc_crc32c_fold_available()
