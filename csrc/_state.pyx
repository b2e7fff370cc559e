# distutils: sources = csrc/dedup_table.c csrc/murmur3.c csrc/crc32c.c
"""Native core of the EventStreamCore state machine (eventstream.state).

One extension, three parts, each in its own file so a reader holds one seam at a time:
  state_dedup.pxi        the compact dedup table (dedup_table.c) and the MurmurHash3 functions
                         used for queue routing and id digests
  state_apply.pxi        the SET_EVENT / DEDUP_ADD apply loops
  state_queue_index.pxi  queue segments: the record codec, the sparse position index, appends
They share one module so the apply loop calls the dedup table and the record checks as plain C
functions. The Python side (eventstream/state/) calls these once per batch or per read; no
per-event Python object is built on the apply path.
"""

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

from batch_codec_h cimport *
from byte_order_h cimport esc_load_u16, esc_load_u32, esc_load_u64
from wal_format_h cimport *


cdef extern from "murmur3.h":
    uint32_t esc_murmur3_32(const uint8_t *data, size_t len, uint32_t seed) nogil
    void esc_murmur3_128(const uint8_t *data, size_t len, uint32_t seed,
                         uint64_t *h1, uint64_t *h2) nogil


cdef extern from "dedup_table.h":
    ctypedef struct esc_dedup_entry:
        uint64_t h1
        uint64_t h2
        int64_t offset
        int64_t first_seen_us
        int32_t queue

    ctypedef struct esc_dedup_table:
        uint64_t head
        uint64_t tail
        uint64_t ids_max

    int ESC_DEDUP_CHUNK_SHIFT
    uint64_t ESC_DEDUP_CHUNK_ENTRIES
    uint64_t ESC_DEDUP_IDS_MAX
    int ESC_DEDUP_ENTRY_BYTES
    int ESC_DEDUP_INSERTED
    int ESC_DEDUP_PRESENT
    int ESC_DEDUP_NO_MEMORY
    int ESC_DEDUP_FULL

    void esc_dedup_init(esc_dedup_table *t, uint64_t ids_max) nogil
    void esc_dedup_free(esc_dedup_table *t) nogil
    uint64_t esc_dedup_count(const esc_dedup_table *t) nogil
    const esc_dedup_entry *esc_dedup_find(const esc_dedup_table *t, uint64_t h1, uint64_t h2) nogil
    int esc_dedup_insert(esc_dedup_table *t, uint64_t h1, uint64_t h2, int32_t queue,
                         int64_t offset, int64_t first_seen_us,
                         const esc_dedup_entry **existing) nogil
    void esc_dedup_prefetch(const esc_dedup_table *t, uint64_t h1) nogil
    uint64_t esc_dedup_expire(esc_dedup_table *t, int64_t cutoff_us) nogil
    uint64_t esc_dedup_bytes(const esc_dedup_table *t) nogil

    ctypedef struct esc_dedup_view:
        uint64_t head
        uint64_t tail

    int esc_dedup_view_take(const esc_dedup_table *t, esc_dedup_view *v) nogil
    void esc_dedup_view_release(esc_dedup_view *v) nogil
    const esc_dedup_entry *esc_dedup_view_at(const esc_dedup_view *v, uint64_t i) nogil


DEDUP_ENTRY_BYTES = ESC_DEDUP_ENTRY_BYTES
DEDUP_IDS_MAX = ESC_DEDUP_IDS_MAX


# Per-event outcome of SET_EVENT (and per-id outcome of DEDUP_ADD).
cdef enum:
    ST_STORED = 0
    ST_DUPLICATE = 1       # id already remembered: (queue, offset) are the original ones
    ST_BAD_QUEUE = 2       # explicit queue not below queue_count at apply time: not stored
    ST_DEDUP_FULL = 3      # dedup table at dedup_ids_max: not stored, the client may retry

STATUS_STORED = ST_STORED
STATUS_DUPLICATE = ST_DUPLICATE
STATUS_BAD_QUEUE = ST_BAD_QUEUE
STATUS_DEDUP_FULL = ST_DEDUP_FULL
QUEUE_RECORD_HEADER_BYTES = ESC_WAL_HEADER_BYTES


class MalformedCommandError(ValueError):
    """A command body that does not parse; in a committed entry this means corruption."""


class QueueDataError(ValueError):
    """Queue segment bytes that fail their checks; the message names the byte position."""


cdef inline const uint8_t *data_ptr(const uint8_t[::1] view) noexcept nogil:
    return &view[0] if view.shape[0] else <const uint8_t *>b""


include "state_dedup.pxi"
include "state_apply.pxi"
include "state_queue_index.pxi"
