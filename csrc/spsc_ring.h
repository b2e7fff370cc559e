/*
 * A single-producer single-consumer ring of variable-length records in shared memory, for the
 * replication pool: the node process writes, one worker process reads (and a second ring the
 * other way). Both processes map the same bytes; nothing in the ring is a pointer.
 *
 * Layout of the mapping (all integers native-endian: both ends run on one machine):
 *
 *     offset  size  field      written by
 *     0       8     magic      creator, once ("ESCRING" + version byte)
 *     8       8     capacity   creator, once (power of two, bytes of record space)
 *     64      8     tail       producer: bytes ever published
 *     128     8     head       consumer: bytes ever consumed
 *     192     4     waiting    consumer sets 1 before it sleeps; producer clears it and wakes
 *     256     ...   capacity bytes of records
 *
 * tail and head only grow (a u64 of bytes does not wrap in practice), so used = tail - head and
 * a full ring is never confused with an empty one. Each sits on its own cache line so the two
 * sides do not false-share. A record is a u32 length and a u32 kind, then the payload, padded
 * to 8 bytes; a record never wraps: when it does not fit before the end, the producer writes a
 * wrap marker (length ESC_RING_WRAP) and starts the record at offset 0. A record is at most
 * capacity / 2 bytes, which guarantees it fits once the consumer has caught up.
 *
 * Memory ordering (C11 model, GCC __atomic builtins on naturally aligned u64/u32):
 *   producer: load head ACQUIRE  (the consumer's reads of a region happen before we reuse it)
 *             write the record bytes (plain stores)
 *             store tail RELEASE  (publishes the record bytes to an ACQUIRE load of tail)
 *   consumer: load tail ACQUIRE  (the record bytes are visible)
 *             read the record (plain loads), then store head RELEASE (hands the space back)
 * Each side reads its own index RELAXED: it is the only writer.
 *
 * Sleeping without lost wake-ups (an eventcount): the consumer stores waiting = 1, issues a
 * SEQ_CST fence, and re-checks tail; only if the ring is still empty does it block on its
 * doorbell (a pipe). The producer, after its RELEASE store of tail, issues a SEQ_CST fence and
 * exchanges waiting to 0; if it was 1 it rings the doorbell. The two fences order each side's
 * store before its load, so at least one of them sees the other's store: either the consumer
 * sees the new tail, or the producer sees waiting = 1 and rings.
 *
 * The consumer trusts nothing it reads from the mapping: a length or position that would leave
 * the record space is reported as corruption (ESC_RING_CORRUPT), never dereferenced.
 */
#ifndef ESC_SPSC_RING_H
#define ESC_SPSC_RING_H

#include <stddef.h>
#include <stdint.h>

#define ESC_RING_MAGIC 0x01474E4952435345ULL /* "ESCRING\x01" little-endian */
#define ESC_RING_HEADER_BYTES 256u
#define ESC_RING_RECORD_HEAD 8u
#define ESC_RING_WRAP 0xFFFFFFFFu
#define ESC_RING_MIN_CAPACITY 4096u

#define ESC_RING_OK 0
#define ESC_RING_EMPTY 1
#define ESC_RING_FULL (-1)
#define ESC_RING_TOO_LARGE (-2)
#define ESC_RING_CORRUPT (-3)
#define ESC_RING_BAD_MAPPING (-4)

typedef struct {
    uint8_t *base;      /* start of the mapping */
    uint8_t *data;      /* base + ESC_RING_HEADER_BYTES */
    uint64_t capacity;  /* copied at attach and checked against the mapping size */
    uint64_t reserved;  /* producer: padded bytes of the reservation in progress */
    uint64_t pending;   /* consumer: padded bytes of the record last peeked */
} esc_ring;

/* Format a fresh ring in `mem` (mem_bytes long); capacity is the largest power of two that
 * fits. Returns ESC_RING_OK or ESC_RING_BAD_MAPPING when mem_bytes is too small. */
int esc_ring_init(esc_ring *ring, void *mem, size_t mem_bytes);

/* Attach to a ring another process formatted; checks magic and that capacity fits. */
int esc_ring_attach(esc_ring *ring, void *mem, size_t mem_bytes);

/* Largest payload one record may carry. */
uint64_t esc_ring_max_payload(const esc_ring *ring);

/* Bytes published and not yet consumed (a snapshot; either side may call it). */
uint64_t esc_ring_used(const esc_ring *ring);

/* Bytes the consumer has ever released: it moves exactly when the consumer makes progress. */
uint64_t esc_ring_consumed(const esc_ring *ring);

/* Producer: reserve room for a payload of n bytes. On ESC_RING_OK *out points at n writable
 * bytes; fill them, then esc_ring_publish. FULL when the consumer has not freed enough yet,
 * TOO_LARGE when n can never fit. */
int esc_ring_reserve(esc_ring *ring, uint32_t kind, size_t n, uint8_t **out);
void esc_ring_publish(esc_ring *ring);

/* Producer, after publishing: 1 when the consumer announced it sleeps and must be woken. */
int esc_ring_wake_needed(esc_ring *ring);

/* Consumer: the oldest record, without consuming it. ESC_RING_OK fills kind/payload/length;
 * ESC_RING_EMPTY; or ESC_RING_CORRUPT. esc_ring_consume releases the record last peeked. */
int esc_ring_peek(esc_ring *ring, uint32_t *kind, const uint8_t **payload, uint32_t *length);
void esc_ring_consume(esc_ring *ring);

/* Consumer: announce sleep. Returns 1 when the ring is still empty (block on the doorbell),
 * 0 when a record arrived meanwhile (waiting is withdrawn; read on). */
int esc_ring_prepare_wait(esc_ring *ring);

#endif /* ESC_SPSC_RING_H */
