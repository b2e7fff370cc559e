# Declarations of csrc/entry_ring.h for cimport; link with `# distutils: sources = csrc/entry_ring.c`.
from libc.stdint cimport int64_t, uint8_t, uint64_t


cdef extern from "entry_ring.h" nogil:
    int ESC_ENTRY_OK
    int ESC_ENTRY_TOO_LARGE
    int ESC_ENTRY_BAD_MAPPING
    int ESC_ENTRY_STALE
    int ESC_ENTRY_MISMATCH
    int ESC_ENTRY_NO_ROOM
    unsigned int ESC_ENTRY_HEADER_BYTES
    unsigned int ESC_ENTRY_MIN_CAPACITY

    ctypedef struct esc_entry_ring:
        uint64_t capacity

    int esc_entry_ring_init(esc_entry_ring *ring, void *mem, size_t mem_bytes)
    int esc_entry_ring_attach(esc_entry_ring *ring, void *mem, size_t mem_bytes)
    uint64_t esc_entry_ring_max_payload(const esc_entry_ring *ring)
    uint64_t esc_entry_ring_tail(const esc_entry_ring *ring)
    uint64_t esc_entry_ring_low(const esc_entry_ring *ring)
    int esc_entry_ring_append(esc_entry_ring *ring, uint64_t index, uint64_t term, const uint8_t *payload,
                              uint64_t length, uint64_t *pos)
    int64_t esc_entry_ring_gather(const esc_entry_ring *ring, uint64_t pos, uint64_t lo, uint64_t hi,
                                  uint8_t *out, size_t room)
