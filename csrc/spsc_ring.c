/* The shared-memory SPSC ring; the layout and the memory-ordering argument are in spsc_ring.h. */
#include "spsc_ring.h"

#include <string.h>

#include "ring_header.h"

#define OFF_TAIL 64
#define OFF_HEAD 128
#define OFF_WAITING 192

#define U64_AT(ring, off) ((uint64_t *)((ring)->base + (off)))
#define U32_AT(ring, off) ((uint32_t *)((ring)->base + (off)))

static inline uint64_t pad8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

/* No bound of its own beyond what the mapping holds; this only keeps the doubling finite. */
#define RING_MAX_CAPACITY (UINT64_C(1) << 62)

/* Formats a new ring in `mem` (format) or checks the one there (attach). */
static int ring_open(esc_ring *ring, void *mem, size_t mem_bytes, int format)
{
    uint64_t capacity = format
        ? esc_ring_header_format(mem, mem_bytes, ESC_RING_HEADER_BYTES, ESC_RING_MIN_CAPACITY,
                                 RING_MAX_CAPACITY, ESC_RING_MAGIC)
        : esc_ring_header_read(mem, mem_bytes, ESC_RING_HEADER_BYTES, ESC_RING_MIN_CAPACITY,
                               RING_MAX_CAPACITY, ESC_RING_MAGIC);
    if (capacity == 0)
        return ESC_RING_BAD_MAPPING;
    ring->base = (uint8_t *)mem;
    ring->data = ring->base + ESC_RING_HEADER_BYTES;
    ring->capacity = capacity;
    ring->reserved = 0;
    ring->pending = 0;
    return ESC_RING_OK;
}

int esc_ring_init(esc_ring *ring, void *mem, size_t mem_bytes)
{
    return ring_open(ring, mem, mem_bytes, 1);
}

int esc_ring_attach(esc_ring *ring, void *mem, size_t mem_bytes)
{
    return ring_open(ring, mem, mem_bytes, 0);
}

uint64_t esc_ring_max_payload(const esc_ring *ring)
{
    return ring->capacity / 2 - ESC_RING_RECORD_HEAD;
}

uint64_t esc_ring_used(const esc_ring *ring)
{
    uint64_t tail = __atomic_load_n(U64_AT(ring, OFF_TAIL), __ATOMIC_ACQUIRE);
    uint64_t head = __atomic_load_n(U64_AT(ring, OFF_HEAD), __ATOMIC_ACQUIRE);
    return tail >= head ? tail - head : 0;
}

uint64_t esc_ring_consumed(const esc_ring *ring)
{
    return __atomic_load_n(U64_AT(ring, OFF_HEAD), __ATOMIC_ACQUIRE);
}

int esc_ring_reserve(esc_ring *ring, uint32_t kind, size_t n, uint8_t **out)
{
    uint64_t tail, head, free_bytes, pos, to_end, need;
    if (n > esc_ring_max_payload(ring))
        return ESC_RING_TOO_LARGE;
    tail = __atomic_load_n(U64_AT(ring, OFF_TAIL), __ATOMIC_RELAXED);
    head = __atomic_load_n(U64_AT(ring, OFF_HEAD), __ATOMIC_ACQUIRE);
    free_bytes = ring->capacity - (tail - head);
    pos = tail & (ring->capacity - 1);
    to_end = ring->capacity - pos;
    need = pad8(ESC_RING_RECORD_HEAD + n);
    if (need > to_end) {
        /* Skip the rest of the buffer: a record's payload is always contiguous. */
        if (to_end + need > free_bytes)
            return ESC_RING_FULL;
        /* The marker becomes visible with the record's own RELEASE in esc_ring_publish. */
        *(uint32_t *)(ring->data + pos) = ESC_RING_WRAP;
        pos = 0;
        ring->reserved = to_end + need;
    } else {
        if (need > free_bytes)
            return ESC_RING_FULL;
        ring->reserved = need;
    }
    *(uint32_t *)(ring->data + pos) = (uint32_t)n;
    *(uint32_t *)(ring->data + pos + 4) = kind;
    *out = ring->data + pos + ESC_RING_RECORD_HEAD;
    return ESC_RING_OK;
}

/* Move this side's own index forward: RELAXED load (it is the only writer), RELEASE store. */
static inline void advance(esc_ring *ring, size_t off, uint64_t by)
{
    uint64_t at = __atomic_load_n(U64_AT(ring, off), __ATOMIC_RELAXED);
    __atomic_store_n(U64_AT(ring, off), at + by, __ATOMIC_RELEASE);
}

void esc_ring_publish(esc_ring *ring)
{
    advance(ring, OFF_TAIL, ring->reserved);
    ring->reserved = 0;
}

int esc_ring_wake_needed(esc_ring *ring)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(U32_AT(ring, OFF_WAITING), __ATOMIC_RELAXED) == 0)
        return 0;
    return __atomic_exchange_n(U32_AT(ring, OFF_WAITING), 0u, __ATOMIC_RELAXED) == 1;
}

/* The record `offset` bytes past head (offset: a sum of earlier spans), checked against the
 * published bytes. Fills kind/payload/length and *span, the bytes it occupies with any wrap
 * skip before it. */
static int peek_at(esc_ring *ring, uint64_t offset, uint32_t *kind, const uint8_t **payload, uint32_t *length,
                   uint64_t *span)
{
    uint64_t head = __atomic_load_n(U64_AT(ring, OFF_HEAD), __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(U64_AT(ring, OFF_TAIL), __ATOMIC_ACQUIRE);
    uint64_t avail, pos, skipped = 0, need;
    uint32_t n;
    if (tail - head == offset)
        return ESC_RING_EMPTY;
    avail = tail - head;
    if (avail > ring->capacity || (avail & 7u) != 0 || (head & 7u) != 0 || offset > avail)
        return ESC_RING_CORRUPT;
    avail -= offset;
    pos = (head + offset) & (ring->capacity - 1);
    n = *(const uint32_t *)(ring->data + pos);
    if (n == ESC_RING_WRAP) {
        skipped = ring->capacity - pos;
        if (skipped >= avail)
            return ESC_RING_CORRUPT;
        pos = 0;
        n = *(const uint32_t *)(ring->data);
    }
    if ((uint64_t)n > esc_ring_max_payload(ring))
        return ESC_RING_CORRUPT;
    need = pad8(ESC_RING_RECORD_HEAD + (uint64_t)n);
    if (skipped + need > avail || pos + need > ring->capacity)
        return ESC_RING_CORRUPT;
    *kind = *(const uint32_t *)(ring->data + pos + 4);
    *payload = ring->data + pos + ESC_RING_RECORD_HEAD;
    *length = n;
    *span = skipped + need;
    return ESC_RING_OK;
}

int esc_ring_peek(esc_ring *ring, uint32_t *kind, const uint8_t **payload, uint32_t *length)
{
    return peek_at(ring, 0, kind, payload, length, &ring->pending);
}

void esc_ring_consume(esc_ring *ring)
{
    advance(ring, OFF_HEAD, ring->pending);
    ring->pending = 0;
}

int esc_ring_prepare_wait(esc_ring *ring)
{
    uint64_t head, tail;
    __atomic_store_n(U32_AT(ring, OFF_WAITING), 1u, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    head = __atomic_load_n(U64_AT(ring, OFF_HEAD), __ATOMIC_RELAXED);
    tail = __atomic_load_n(U64_AT(ring, OFF_TAIL), __ATOMIC_ACQUIRE);
    if (tail != head) {
        __atomic_store_n(U32_AT(ring, OFF_WAITING), 0u, __ATOMIC_RELAXED);
        return 0;
    }
    return 1;
}
