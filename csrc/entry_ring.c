/* The shared entry ring; the layout and the memory-ordering argument are in entry_ring.h. */
#include "entry_ring.h"

#include <string.h>

#include "byte_order.h"
#include "ring_header.h"

#define OFF_TAIL 64
#define OFF_LOW 128
#define TABLE_ROW 12u

#define U64_AT(ring, off) ((uint64_t *)((ring)->base + (off)))

static inline uint64_t pad8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

/* Formats a new ring in `mem` (format) or checks the one there (attach). */
static int entry_ring_open(esc_entry_ring *ring, void *mem, size_t mem_bytes, int format)
{
    /* At most 2^31, so a payload length always fits the record's u32. */
    uint64_t capacity = format
        ? esc_ring_header_format(mem, mem_bytes, ESC_ENTRY_HEADER_BYTES, ESC_ENTRY_MIN_CAPACITY,
                                 ESC_ENTRY_MAX_CAPACITY, ESC_ENTRY_MAGIC)
        : esc_ring_header_read(mem, mem_bytes, ESC_ENTRY_HEADER_BYTES, ESC_ENTRY_MIN_CAPACITY,
                               ESC_ENTRY_MAX_CAPACITY, ESC_ENTRY_MAGIC);
    if (capacity == 0)
        return ESC_ENTRY_BAD_MAPPING;
    ring->base = (uint8_t *)mem;
    ring->data = ring->base + ESC_ENTRY_HEADER_BYTES;
    ring->capacity = capacity;
    return ESC_ENTRY_OK;
}

int esc_entry_ring_init(esc_entry_ring *ring, void *mem, size_t mem_bytes)
{
    return entry_ring_open(ring, mem, mem_bytes, 1);
}

int esc_entry_ring_attach(esc_entry_ring *ring, void *mem, size_t mem_bytes)
{
    return entry_ring_open(ring, mem, mem_bytes, 0);
}

uint64_t esc_entry_ring_max_payload(const esc_entry_ring *ring)
{
    return ring->capacity / 2 - ESC_ENTRY_RECORD_HEAD;
}

uint64_t esc_entry_ring_tail(const esc_entry_ring *ring)
{
    return __atomic_load_n(U64_AT(ring, OFF_TAIL), __ATOMIC_ACQUIRE);
}

uint64_t esc_entry_ring_low(const esc_entry_ring *ring)
{
    return __atomic_load_n(U64_AT(ring, OFF_LOW), __ATOMIC_ACQUIRE);
}

int esc_entry_ring_append(esc_entry_ring *ring, uint64_t index, uint64_t term, const uint8_t *payload,
                          uint64_t length, uint64_t *pos)
{
    uint64_t tail, at, to_end, need, skip, end;
    uint8_t *rec;
    if (length > esc_entry_ring_max_payload(ring) || index == ESC_ENTRY_WRAP)
        return ESC_ENTRY_TOO_LARGE;
    tail = __atomic_load_n(U64_AT(ring, OFF_TAIL), __ATOMIC_RELAXED);
    at = tail & (ring->capacity - 1);
    to_end = ring->capacity - at;
    need = pad8(ESC_ENTRY_RECORD_HEAD + length);
    skip = need > to_end ? to_end : 0;
    end = tail + skip + need;
    if (end > ring->capacity) {
        /* Give up the bytes this record reuses before touching them (see the header). */
        __atomic_store_n(U64_AT(ring, OFF_LOW), end - ring->capacity, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    if (skip) {
        uint64_t marker = ESC_ENTRY_WRAP;
        memcpy(ring->data + at, &marker, 8);
        at = 0;
    }
    rec = ring->data + at;
    memcpy(rec, &index, 8);
    memcpy(rec + 8, &term, 8);
    {
        uint32_t n = (uint32_t)length, zero = 0;
        memcpy(rec + 16, &n, 4);
        memcpy(rec + 20, &zero, 4);
    }
    if (length)
        memcpy(rec + ESC_ENTRY_RECORD_HEAD, payload, length);
    __atomic_store_n(U64_AT(ring, OFF_TAIL), end, __ATOMIC_RELEASE);
    *pos = tail + skip;
    return ESC_ENTRY_OK;
}

/* After a failed check: the bytes were overwritten (STALE) or the order was wrong (MISMATCH). */
static int failure(const esc_entry_ring *ring, uint64_t pos)
{
    return esc_entry_ring_check(ring, pos) == ESC_ENTRY_STALE ? ESC_ENTRY_STALE : ESC_ENTRY_MISMATCH;
}

int esc_entry_ring_check(const esc_entry_ring *ring, uint64_t pos)
{
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(U64_AT(ring, OFF_LOW), __ATOMIC_RELAXED) > pos ? ESC_ENTRY_STALE : ESC_ENTRY_OK;
}

int esc_entry_cursor_begin(const esc_entry_ring *ring, esc_entry_cursor *cursor, uint64_t pos)
{
    cursor->cur = pos;
    cursor->tail = __atomic_load_n(U64_AT(ring, OFF_TAIL), __ATOMIC_ACQUIRE);
    return (pos & 7u) != 0 ? ESC_ENTRY_MISMATCH : ESC_ENTRY_OK;
}

int esc_entry_cursor_next(const esc_entry_ring *ring, esc_entry_cursor *cursor, uint64_t walk_pos, uint64_t index,
                          uint64_t *term, const uint8_t **payload, uint32_t *length)
{
    const uint64_t tail = cursor->tail;
    uint64_t cur = cursor->cur, at, got, need;
    const uint8_t *rec;
    if (cur + ESC_ENTRY_RECORD_HEAD > tail)
        return failure(ring, walk_pos);
    at = cur & (ring->capacity - 1);
    memcpy(&got, ring->data + at, 8);
    if (got == ESC_ENTRY_WRAP) {
        cur += ring->capacity - at;
        at = 0;
        if (cur + ESC_ENTRY_RECORD_HEAD > tail)
            return failure(ring, walk_pos);
        memcpy(&got, ring->data, 8);
    }
    if (at + ESC_ENTRY_RECORD_HEAD > ring->capacity)
        return failure(ring, walk_pos);
    rec = ring->data + at;
    memcpy(term, rec + 8, 8);
    memcpy(length, rec + 16, 4);
    need = pad8(ESC_ENTRY_RECORD_HEAD + (uint64_t)*length);
    if (got != index || *length > esc_entry_ring_max_payload(ring) || at + need > ring->capacity || cur + need > tail)
        return failure(ring, walk_pos);
    *payload = rec + ESC_ENTRY_RECORD_HEAD;
    cursor->cur = cur + need;
    return ESC_ENTRY_OK;
}

int64_t esc_entry_ring_gather(const esc_entry_ring *ring, uint64_t pos, uint64_t lo, uint64_t hi, uint8_t *out,
                              size_t room)
{
    esc_entry_cursor cursor;
    uint64_t count, index;
    size_t written;
    if (hi < lo || esc_entry_cursor_begin(ring, &cursor, pos) != ESC_ENTRY_OK)
        return ESC_ENTRY_MISMATCH;
    count = hi - lo + 1;
    if (count > room / TABLE_ROW)
        return ESC_ENTRY_NO_ROOM;
    written = (size_t)(count * TABLE_ROW);
    for (index = lo; index <= hi; index++) {
        uint64_t term;
        uint32_t length;
        const uint8_t *payload;
        int rc = esc_entry_cursor_next(ring, &cursor, pos, index, &term, &payload, &length);
        if (rc != ESC_ENTRY_OK)
            return rc;
        if (length > room - written)
            return ESC_ENTRY_NO_ROOM;
        esc_store_u64(out + (index - lo) * TABLE_ROW, term);
        esc_store_u32(out + (index - lo) * TABLE_ROW + 8, length);
        memcpy(out + written, payload, length);
        written += length;
    }
    /* The copy is good only if no byte from `pos` on was given up while we read it. */
    if (esc_entry_ring_check(ring, pos) != ESC_ENTRY_OK)
        return ESC_ENTRY_STALE;
    return (int64_t)written;
}
