# distutils: sources = csrc/crc32c.c
"""Native kernel of eventstream.transport.frames: split a receive buffer into frame bodies.

A node takes in tens of thousands of small frames a second; the per-frame header parse, limit
check and CRC here cost a fraction of the Python loop they replace (frames.py keeps that loop as
the reference the tests compare against). Frame layout: eventstream/transport/frames.py.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t

from byte_views cimport as_byte_view
from crc32c_h cimport esc_crc32c

# Outcomes reported to frames.py, which owns the error messages.
SPLIT_OK = 0
SPLIT_TOO_LONG = 1
SPLIT_BAD_CRC = 2


cdef inline uint32_t _load_u32le(const uint8_t *p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)


def split_frames(buffer, Py_ssize_t start, unsigned long long limit, list out):
    """Append to `out` the body (as bytes) of every complete frame in buffer[start:].

    Returns (status, position, detail1, detail2): position is where the first incomplete or bad
    frame begins; on SPLIT_TOO_LONG detail1 is the length prefix, on SPLIT_BAD_CRC detail1 is the
    header's CRC and detail2 the body's. Nothing past a bad frame is returned.
    """
    cdef const unsigned char[::1] view = as_byte_view(buffer)
    cdef Py_ssize_t end = view.shape[0]
    cdef Py_ssize_t pos = start
    cdef const uint8_t *base
    cdef uint32_t length, expected, actual
    if start < 0 or start > end:
        raise ValueError(f"start {start} outside a buffer of {end} bytes")
    if end == 0:
        return SPLIT_OK, pos, 0, 0
    base = &view[0]
    while end - pos >= 8:
        length = _load_u32le(base + pos)
        expected = _load_u32le(base + pos + 4)
        if length > limit:
            return SPLIT_TOO_LONG, pos, length, 0
        if <Py_ssize_t>length > end - pos - 8:
            break
        actual = esc_crc32c(0, base + pos + 8, length)
        if actual != expected:
            return SPLIT_BAD_CRC, pos, expected, actual
        out.append(PyBytes_FromStringAndSize(<const char *>base + pos + 8, length))
        pos += 8 + length
    return SPLIT_OK, pos, 0, 0
