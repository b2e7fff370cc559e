# Declarations of csrc/spsc_ring.h for cimport; link with `# distutils: sources = csrc/spsc_ring.c`.
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef extern from "spsc_ring.h" nogil:
    int ESC_RING_OK
    int ESC_RING_EMPTY
    int ESC_RING_FULL
    int ESC_RING_TOO_LARGE
    int ESC_RING_CORRUPT
    int ESC_RING_BAD_MAPPING
    unsigned int ESC_RING_HEADER_BYTES
    unsigned int ESC_RING_MIN_CAPACITY

    ctypedef struct esc_ring:
        uint64_t capacity

    int esc_ring_init(esc_ring *ring, void *mem, size_t mem_bytes)
    int esc_ring_attach(esc_ring *ring, void *mem, size_t mem_bytes)
    uint64_t esc_ring_max_payload(const esc_ring *ring)
    uint64_t esc_ring_used(const esc_ring *ring)
    uint64_t esc_ring_consumed(const esc_ring *ring)
    int esc_ring_reserve(esc_ring *ring, uint32_t kind, size_t n, uint8_t **out)
    void esc_ring_publish(esc_ring *ring)
    int esc_ring_wake_needed(esc_ring *ring)
    int esc_ring_peek(esc_ring *ring, uint32_t *kind, const uint8_t **payload, uint32_t *length)
    void esc_ring_consume(esc_ring *ring)
    int esc_ring_prepare_wait(esc_ring *ring)
