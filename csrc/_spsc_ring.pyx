# distutils: sources = csrc/spsc_ring.c csrc/entry_ring.c csrc/crc32c.c csrc/send_all.c
"""Python face of the replication pool's shared-memory rings.

SpscRing (csrc/spsc_ring.h has the layout and the memory-ordering argument): one object is one
end: the producer process calls write*, wake_needed; the consumer process calls read,
prepare_wait. Using both ends of one ring from two processes at once is the
contract; two producers (or two consumers) are not.

EntryRing (csrc/entry_ring.h): the leader appends each new log entry once; every worker builds
AppendEntries frames from it at its own positions (encode_append), and learns when the leader
has overwritten what it was asked to send."""

import os

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from posix.uio cimport iovec

from byte_views cimport as_byte_view
from crc32c_h cimport esc_crc32c
from entry_ring_h cimport (
    ESC_ENTRY_HEADER_BYTES, ESC_ENTRY_MIN_CAPACITY, ESC_ENTRY_MISMATCH, ESC_ENTRY_NO_ROOM, ESC_ENTRY_OK,
    ESC_ENTRY_STALE, ESC_ENTRY_TOO_LARGE, esc_entry_ring, esc_entry_ring_append, esc_entry_ring_attach,
    esc_entry_ring_gather, esc_entry_ring_init, esc_entry_ring_low, esc_entry_ring_max_payload,
    esc_entry_ring_tail,
)
from send_all_h cimport esc_send_all
from spsc_ring_h cimport (
    ESC_RING_BAD_MAPPING, ESC_RING_CORRUPT, ESC_RING_EMPTY, ESC_RING_FULL, ESC_RING_HEADER_BYTES,
    ESC_RING_MIN_CAPACITY, ESC_RING_OK, ESC_RING_TOO_LARGE, esc_ring, esc_ring_attach,
    esc_ring_consume, esc_ring_consumed, esc_ring_init, esc_ring_max_payload, esc_ring_peek,
    esc_ring_prepare_wait,
    esc_ring_publish, esc_ring_reserve, esc_ring_used, esc_ring_wake_needed,
)

HEADER_BYTES = ESC_RING_HEADER_BYTES
MIN_CAPACITY = ESC_RING_MIN_CAPACITY
# Bytes of a wire frame's head: u32 length, u32 CRC-32C (eventstream/transport/frames.py).
cdef enum:
    FRAME_HEAD = 8


class RingError(ValueError):
    """The mapping is not a ring, or its contents break the ring's invariants."""


class RecordTooLargeError(ValueError):
    """A record larger than the ring's max_payload: it can never be written."""


cdef inline void store_u32le(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF


cdef class _SharedMapping:
    """One process's end of a ring in shared bytes (an mmap both processes map). Subclasses
    format the bytes (create) or check another process's format (attach) in their __cinit__."""
    cdef unsigned char[::1] view
    cdef object mapping
    cdef bint attached
    cdef readonly uint64_t capacity  # bytes of record space, set once the ring is bound

    def __cinit__(self, mapping, bint create):
        self.view = mapping
        self.mapping = mapping

    cdef int _refuse(self, str what, size_t min_bytes) except -1:
        cdef Py_ssize_t size = len(self.mapping)
        self.view = None
        self.mapping = None
        raise RingError(
            f"a {size}-byte mapping is not a usable {what} (64-byte aligned, at least {min_bytes} bytes, "
            f"formatted by create())"
        )

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

    def close(self):
        """Drop this end's view of the mapping (the mapping can then be closed)."""
        self.attached = False
        self.view = None
        self.mapping = None


cdef class SpscRing(_SharedMapping):
    cdef esc_ring ring

    def __cinit__(self, mapping, bint create):
        cdef int rc
        if create:
            rc = esc_ring_init(&self.ring, &self.view[0], self.view.shape[0])
        else:
            rc = esc_ring_attach(&self.ring, &self.view[0], self.view.shape[0])
        if rc != ESC_RING_OK:
            self._refuse("ring", ESC_RING_HEADER_BYTES + ESC_RING_MIN_CAPACITY)
        self.capacity = self.ring.capacity
        self.attached = True

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

    def prepare_wait(self):
        """Announce that the consumer is about to sleep on its doorbell. True: still empty, sleep;
        False: a record arrived meanwhile, read it instead."""
        self._check()
        return esc_ring_prepare_wait(&self.ring) == 1



def send_all(int fd, data, int timeout_ms):
    """Write all of `data` to non-blocking socket fd, waiting up to timeout_ms whenever its
    buffer is full. OSError on failure or timeout (the stream may then hold part of it)."""
    cdef const unsigned char[::1] v = as_byte_view(data)
    cdef iovec iov
    cdef int rc
    if v.shape[0] == 0:
        return
    iov.iov_base = <void *>&v[0]
    iov.iov_len = v.shape[0]
    with nogil:
        rc = esc_send_all(fd, &iov, 1, timeout_ms)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))


ENTRY_HEADER_BYTES = ESC_ENTRY_HEADER_BYTES
ENTRY_MIN_CAPACITY = ESC_ENTRY_MIN_CAPACITY
# encode_append results other than a frame length.
GATHER_STALE = ESC_ENTRY_STALE
GATHER_MISMATCH = ESC_ENTRY_MISMATCH
cdef enum:
    # The fixed head of a peer message (eventstream/transport/peer_codec.py): its byte layout is
    # written field by field below, and a differential test holds it to encode_message.
    MESSAGE_HEAD = 88
    ENTRY_ROW = 12
    PEER_CODEC_VERSION = 1
    MESSAGE_APPEND = 1
APPEND_OVERHEAD_BYTES = FRAME_HEAD + MESSAGE_HEAD


cdef inline void store_u64le(uint8_t *p, uint64_t v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = (v >> (8 * i)) & 0xFF


cdef class EntryRing(_SharedMapping):
    cdef esc_entry_ring ring

    def __cinit__(self, mapping, bint create):
        cdef int rc
        if create:
            rc = esc_entry_ring_init(&self.ring, &self.view[0], self.view.shape[0])
        else:
            rc = esc_entry_ring_attach(&self.ring, &self.view[0], self.view.shape[0])
        if rc != ESC_ENTRY_OK:
            self._refuse("entry ring", ESC_ENTRY_HEADER_BYTES + ESC_ENTRY_MIN_CAPACITY)
        self.capacity = self.ring.capacity
        self.attached = True

    @property
    def max_payload(self):
        return esc_entry_ring_max_payload(&self.ring)

    @property
    def tail(self):
        """Position after the last record published."""
        self._check()
        return esc_entry_ring_tail(&self.ring)

    @property
    def low(self):
        """Records at positions below this may be overwritten: they are gone."""
        self._check()
        return esc_entry_ring_low(&self.ring)

    def append(self, uint64_t index, uint64_t term, data):
        """Publish one entry; returns its record's position (for encode_append)."""
        self._check()
        cdef const unsigned char[::1] v = as_byte_view(data)
        cdef uint64_t pos = 0
        cdef size_t n = v.shape[0]
        cdef const uint8_t *p = &v[0] if n else NULL
        cdef int rc
        with nogil:
            rc = esc_entry_ring_append(&self.ring, index, term, p, n, &pos)
        if rc == ESC_ENTRY_TOO_LARGE:
            raise RecordTooLargeError(
                f"entry {index} of {n} bytes exceeds the entry ring's limit of {esc_entry_ring_max_payload(&self.ring)}")
        return pos

    def encode_append(self, out, size_t offset, uint64_t to, uint64_t sender, uint64_t term, uint64_t prev_index,
                      uint64_t prev_term, uint64_t commit, uint64_t pos, uint64_t lo, uint64_t hi):
        """Write one framed AppendEntries message (frame header with CRC-32C, then the body that
        eventstream/transport/peer_codec.py encodes) carrying entries lo..hi, read from the record
        at `pos` on, into out[offset:]. Returns the frame's length, or GATHER_STALE when the
        records were overwritten before they were copied out, or GATHER_MISMATCH when `pos` does
        not hold entry lo (then nothing may be sent). ValueError when out is too small."""
        self._check()
        cdef unsigned char[::1] dst = out
        cdef size_t room
        cdef int64_t gathered
        cdef uint8_t *body
        cdef uint64_t count
        if offset > <size_t>dst.shape[0] or dst.shape[0] - offset < FRAME_HEAD + MESSAGE_HEAD:
            raise ValueError("out has no room for an AppendEntries head")
        if hi < lo or hi - lo >= 0xFFFFFFFF:
            return GATHER_MISMATCH
        count = hi - lo + 1
        room = dst.shape[0] - offset - FRAME_HEAD - MESSAGE_HEAD
        body = &dst[offset + FRAME_HEAD]
        with nogil:
            gathered = esc_entry_ring_gather(&self.ring, pos, lo, hi, body + MESSAGE_HEAD, room)
            if gathered >= 0:
                body[0] = PEER_CODEC_VERSION
                body[1] = MESSAGE_APPEND
                body[2] = 0  # flags
                body[3] = 0  # voters
                store_u64le(body + 4, to)
                store_u64le(body + 12, sender)
                store_u64le(body + 20, term)
                store_u64le(body + 28, prev_index)
                store_u64le(body + 36, prev_term)
                store_u64le(body + 44, commit)
                store_u64le(body + 52, 0)  # hint_index
                store_u64le(body + 60, 0)  # read_seq
                store_u64le(body + 68, 0)  # offset
                store_u32le(body + 76, <uint32_t>count)
                store_u32le(body + 80, 0)  # context length
                store_u32le(body + 84, 0)  # data length
                store_u32le(body - FRAME_HEAD, <uint32_t>(MESSAGE_HEAD + gathered))
                store_u32le(body - FRAME_HEAD + 4, esc_crc32c(0, body, MESSAGE_HEAD + gathered))
        if gathered == ESC_ENTRY_NO_ROOM:
            raise ValueError(f"out has no room for entries {lo}..{hi}")
        if gathered < 0:
            return gathered
        return FRAME_HEAD + MESSAGE_HEAD + gathered

