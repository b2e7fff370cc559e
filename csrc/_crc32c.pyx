# distutils: sources = csrc/crc32c.c
"""CRC-32C for Python callers; native callers use csrc/crc32c.h directly."""

from libc.stdint cimport uint32_t

from byte_views cimport as_byte_view
from crc32c_h cimport (
    esc_crc32c,
    esc_crc32c_fold_available,
    esc_crc32c_hw_available,
    esc_crc32c_no_fold,
    esc_crc32c_sw,
)


def crc32c(data, unsigned int value=0):
    """CRC-32C of a bytes-like object, continuing from `value` (0 to start)."""
    cdef const unsigned char[::1] view = as_byte_view(data)
    cdef size_t length = view.shape[0]
    cdef uint32_t crc
    if length == 0:
        return value
    # Large buffers are checksummed without the GIL so other threads keep running.
    if length >= 65536:
        with nogil:
            crc = esc_crc32c(value, &view[0], length)
    else:
        crc = esc_crc32c(value, &view[0], length)
    return crc


def crc32c_table(data, unsigned int value=0):
    """The portable table path, whatever the CPU; for differential tests against crc32c()."""
    cdef const unsigned char[::1] view = as_byte_view(data)
    if view.shape[0] == 0:
        return value
    return esc_crc32c_sw(value, &view[0], view.shape[0])


def crc32c_without_folding(data, unsigned int value=0):
    """The crc32-instruction path without VPCLMULQDQ folding; for differential tests."""
    cdef const unsigned char[::1] view = as_byte_view(data)
    if view.shape[0] == 0:
        return value
    return esc_crc32c_no_fold(value, &view[0], view.shape[0])


def folding_accelerated():
    """True when buffers of 1 KiB and more are folded with VPCLMULQDQ."""
    return esc_crc32c_fold_available() == 1


def hardware_accelerated():
    """True when crc32c() uses the CPU's CRC-32C instruction."""
    return esc_crc32c_hw_available() == 1
