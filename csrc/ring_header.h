/*
 * The header both shared-memory rings (spsc_ring.h, entry_ring.h) begin with: a magic word at
 * offset 0 and the data capacity, a power of two, at offset 8; the data starts at the ring's
 * header size. The formatting process stores the magic last, with release order, so an
 * attaching process that reads it with acquire order also sees the capacity.
 */
#ifndef ESC_RING_HEADER_H
#define ESC_RING_HEADER_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A mapping both rings accept: present, 64-byte aligned, room for the header and the least data. */
static inline int esc_ring_mapping_usable(const void *mem, size_t mem_bytes, size_t header_bytes,
                                          uint64_t min_capacity)
{
    return mem != NULL && ((uintptr_t)mem & 63u) == 0 && mem_bytes >= header_bytes + min_capacity;
}

/* Zeroes the header and writes capacity (the largest power of two from min_capacity up to
 * max_capacity that fits) and magic. Returns the capacity, or 0 for an unusable mapping. */
static inline uint64_t esc_ring_header_format(void *mem, size_t mem_bytes, size_t header_bytes,
                                              uint64_t min_capacity, uint64_t max_capacity,
                                              uint64_t magic)
{
    uint64_t capacity = min_capacity;
    if (!esc_ring_mapping_usable(mem, mem_bytes, header_bytes, min_capacity))
        return 0;
    while (capacity * 2 <= mem_bytes - header_bytes && capacity < max_capacity)
        capacity *= 2;
    memset(mem, 0, header_bytes);
    ((uint64_t *)mem)[1] = capacity;
    __atomic_store_n((uint64_t *)mem, magic, __ATOMIC_RELEASE);
    return capacity;
}

/* The capacity of a header another process formatted, or 0 when the mapping is unusable, the
 * magic differs, or the capacity is not a power of two within [min, max] that fits the mapping. */
static inline uint64_t esc_ring_header_read(void *mem, size_t mem_bytes, size_t header_bytes,
                                            uint64_t min_capacity, uint64_t max_capacity,
                                            uint64_t magic)
{
    uint64_t capacity;
    if (!esc_ring_mapping_usable(mem, mem_bytes, header_bytes, min_capacity))
        return 0;
    if (__atomic_load_n((uint64_t *)mem, __ATOMIC_ACQUIRE) != magic)
        return 0;
    capacity = ((uint64_t *)mem)[1];
    if (capacity < min_capacity || capacity > max_capacity || (capacity & (capacity - 1)) != 0 ||
        capacity > mem_bytes - header_bytes)
        return 0;
    return capacity;
}

#endif
