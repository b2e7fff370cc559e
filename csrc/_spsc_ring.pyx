# distutils: sources = csrc/spsc_ring.c csrc/crc32c.c csrc/send_all.c
"""Python face of the shared-memory SPSC ring (csrc/spsc_ring.h has the layout and the
memory-ordering argument). One SpscRing object is one end: the producer process calls write*,
wake_needed; the consumer process calls read, drain_frames, prepare_wait. Using both ends of one
ring from two processes at once is the contract; two producers (or two consumers) are not."""

import os

from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from posix.uio cimport iovec

from byte_views cimport as_byte_view
from crc32c_h cimport esc_crc32c
from send_all_h cimport esc_send_all
from spsc_ring_h cimport (
    ESC_RING_BAD_MAPPING, ESC_RING_CORRUPT, ESC_RING_EMPTY, ESC_RING_FULL, ESC_RING_HEADER_BYTES,
    ESC_RING_MIN_CAPACITY, ESC_RING_OK, ESC_RING_TOO_LARGE, esc_ring, esc_ring_attach,
    esc_ring_consume, esc_ring_consumed, esc_ring_init, esc_ring_max_payload, esc_ring_peek, esc_ring_peek_many,
    esc_ring_prepare_wait,
    esc_ring_publish, esc_ring_reserve, esc_ring_used, esc_ring_wake_needed,
)

HEADER_BYTES = ESC_RING_HEADER_BYTES
MIN_CAPACITY = ESC_RING_MIN_CAPACITY
# Bytes drain_frames puts before each record's payload: u32 length, u32 CRC-32C (frames.py).
cdef enum:
    FRAME_HEAD = 8
    # Records per send_frames call: two iovecs each, well under any IOV_MAX.
    SEND_BATCH = 64
FRAME_HEADER_BYTES = FRAME_HEAD


class RingError(ValueError):
    """The mapping is not a ring, or its contents break the ring's invariants."""


class RecordTooLargeError(ValueError):
    """A record larger than the ring's max_payload: it can never be written."""


cdef inline void store_u32le(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef class SpscRing:
    cdef esc_ring ring
    cdef unsigned char[::1] view
    cdef object mapping
    cdef bint attached

    def __cinit__(self, mapping, bint create):
        cdef int rc
        self.view = mapping
        self.mapping = mapping
        if create:
            rc = esc_ring_init(&self.ring, &self.view[0], self.view.shape[0])
        else:
            rc = esc_ring_attach(&self.ring, &self.view[0], self.view.shape[0])
        if rc != ESC_RING_OK:
            self.view = None
            raise RingError(
                f"a {len(mapping)}-byte mapping is not a usable ring (64-byte aligned, at least "
                f"{ESC_RING_HEADER_BYTES + ESC_RING_MIN_CAPACITY} bytes, formatted by create())"
            )
        self.attached = True

    @classmethod
    def create(cls, mapping):
        """Format `mapping` (a writable buffer, e.g. an mmap) as an empty ring."""
        return cls(mapping, True)

    @classmethod
    def attach(cls, mapping):
        """Use a ring that another process formatted in the same shared bytes."""
        return cls(mapping, False)

    cdef inline void _check(self) except *:
        if not self.attached:
            raise RingError("ring is closed")

    @property
    def capacity(self):
        return self.ring.capacity

    @property
    def max_payload(self):
        return esc_ring_max_payload(&self.ring)

    @property
    def used(self):
        """Bytes written and not yet read (record heads and padding included)."""
        self._check()
        return esc_ring_used(&self.ring)

    @property
    def consumed(self):
        """Bytes the consumer has released since the ring was made; grows only with progress."""
        self._check()
        return esc_ring_consumed(&self.ring)

    # -- producer ------------------------------------------------------------------------------
    def write(self, unsigned int kind, data):
        """Append one record; False when the ring has no room now (nothing is written)."""
        return self.write_parts(kind, (data,))

    def write_parts(self, unsigned int kind, parts):
        """Append one record whose payload is the concatenation of `parts` (buffers), copied
        straight into the ring: the message is never joined in process memory first."""
        self._check()
        cdef list views = [as_byte_view(p) for p in parts]
        cdef const unsigned char[::1] v
        cdef size_t total = 0
        cdef size_t n
        cdef uint8_t *out
        cdef int rc
        for v in views:
            total += v.shape[0]
        rc = esc_ring_reserve(&self.ring, kind, total, &out)
        if rc == ESC_RING_FULL:
            return False
        if rc == ESC_RING_TOO_LARGE:
            raise RecordTooLargeError(f"record of {total} bytes exceeds the ring's limit of {esc_ring_max_payload(&self.ring)}")
        for v in views:
            n = v.shape[0]
            if n:
                memcpy(out, &v[0], n)
                out += n
        esc_ring_publish(&self.ring)
        return True

    def wake_needed(self):
        """After writing: True when the consumer sleeps and its doorbell must be rung."""
        self._check()
        return esc_ring_wake_needed(&self.ring) == 1

    # -- consumer ------------------------------------------------------------------------------
    cdef bint _peek(self, uint32_t *kind, const uint8_t **payload, uint32_t *length) except -1:
        """True with the oldest record's fields, False when empty; corruption raises."""
        self._check()
        cdef int rc = esc_ring_peek(&self.ring, kind, payload, length)
        if rc == ESC_RING_EMPTY:
            return False
        if rc != ESC_RING_OK:
            raise RingError("ring corrupt: a record head points outside the published bytes")
        return True

    def read(self):
        """The oldest record as (kind, payload bytes), consumed; None when the ring is empty."""
        cdef uint32_t kind, length
        cdef const uint8_t *payload
        if not self._peek(&kind, &payload, &length):
            return None
        data = payload[:length]
        esc_ring_consume(&self.ring)
        return kind, data

    def drain_frames(self, out):
        """Move whole records into `out` (a writable buffer) as wire frames (u32 length, u32
        CRC-32C, payload; eventstream/transport/frames.py) until the ring is empty or the next
        frame does not fit. Returns (bytes written, records moved). (0, 0) with records waiting
        means the next frame is larger than `out`: see next_frame_bytes."""
        self._check()
        cdef unsigned char[::1] dst = out
        cdef size_t room = dst.shape[0]
        cdef size_t pos = 0
        cdef size_t records = 0
        cdef uint32_t kind, length, crc
        cdef const uint8_t *payload
        cdef int rc = ESC_RING_OK
        with nogil:
            while True:
                rc = esc_ring_peek(&self.ring, &kind, &payload, &length)
                if rc != ESC_RING_OK:
                    break
                if pos + FRAME_HEAD + length > room:
                    break
                crc = esc_crc32c(0, payload, length)
                store_u32le(&dst[pos], length)
                store_u32le(&dst[pos + 4], crc)
                if length:
                    memcpy(&dst[pos + FRAME_HEAD], payload, length)
                pos += FRAME_HEAD + length
                records += 1
                esc_ring_consume(&self.ring)
        if rc == ESC_RING_CORRUPT:
            raise RingError("ring corrupt: a record head points outside the published bytes")
        return pos, records

    def send_frames(self, int fd, int timeout_ms):
        """Write up to SEND_BATCH of the oldest records to socket `fd` (non-blocking) as wire
        frames, straight from the shared memory, with one gather write; then release them.
        Returns (bytes written, records); (0, 0) when the ring is empty. On OSError (socket
        failed, or a wait for room exceeded timeout_ms) the records stay in the ring, and the
        stream may hold part of a frame: the caller must close the socket."""
        self._check()
        cdef const uint8_t *payloads[SEND_BATCH]
        cdef uint32_t lengths[SEND_BATCH]
        cdef uint8_t heads[SEND_BATCH][FRAME_HEAD]
        cdef iovec iov[2 * SEND_BATCH]
        cdef int n = esc_ring_peek_many(&self.ring, payloads, lengths, SEND_BATCH)
        cdef int i, rc
        cdef size_t total = 0
        if n < 0:
            raise RingError("ring corrupt: a record head points outside the published bytes")
        if n == 0:
            return 0, 0
        with nogil:
            for i in range(n):
                store_u32le(&heads[i][0], lengths[i])
                store_u32le(&heads[i][4], esc_crc32c(0, payloads[i], lengths[i]))
                iov[2 * i].iov_base = &heads[i][0]
                iov[2 * i].iov_len = FRAME_HEAD
                iov[2 * i + 1].iov_base = <void *>payloads[i]
                iov[2 * i + 1].iov_len = lengths[i]
                total += FRAME_HEAD + lengths[i]
            rc = esc_send_all(fd, iov, 2 * n, timeout_ms)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        esc_ring_consume(&self.ring)
        return total, n

    def next_frame_bytes(self):
        """Bytes the oldest record takes as a frame (drain_frames), or 0 when the ring is empty."""
        cdef uint32_t kind, length
        cdef const uint8_t *payload
        if not self._peek(&kind, &payload, &length):
            return 0
        return FRAME_HEAD + length

    def prepare_wait(self):
        """Announce that the consumer is about to sleep on its doorbell. True: still empty, sleep;
        False: a record arrived meanwhile, read it instead."""
        self._check()
        return esc_ring_prepare_wait(&self.ring) == 1

    def close(self):
        """Drop this end's view of the mapping (the mapping can then be closed)."""
        self.attached = False
        self.view = None
        self.mapping = None
