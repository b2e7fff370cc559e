/*
 * The replication pool's shared entry ring: the leader writes each new log entry here once, and
 * every follower's worker process reads it at its own position to build AppendEntries. One
 * producer, any number of readers, and no back-pressure: a reader never holds the producer
 * back (a stopped worker must not stall the leader), so the producer overwrites the oldest
 * records and a reader that falls a whole ring behind finds its records gone. It detects that
 * and reports it, and never sends what it copied (a seqlock-style check below).
 *
 * Layout of the mapping (integers native-endian: both ends run on one machine):
 *
 *     offset  size  field      written by
 *     0       8     magic      creator, once ("ESCENTR" + version byte)
 *     8       8     capacity   creator, once (power of two, bytes of record space)
 *     64      8     tail       producer: bytes ever published
 *     128     8     low        producer: bytes below this position may be overwritten
 *     256     ...   capacity bytes of records
 *
 * A record: u64 index, u64 term, u32 length, u32 zero, then the payload, padded to 8 bytes. It
 * never wraps: when it does not fit before the end, the producer writes a wrap marker (a u64
 * index of ESC_ENTRY_WRAP; records are 8-aligned, so 8 bytes always remain) and starts the record
 * at offset 0. A record's *position* is its start in the stream of bytes ever written (not masked),
 * so a position names one record for the ring's whole life: positions never repeat.
 *
 * Invariant: low == max(0, tail_after_current_write - capacity), raised before a write begins;
 * every byte at a position >= low is exactly what was published there.
 *
 * Memory ordering (C11 model, GCC __atomic builtins on naturally aligned u64):
 *   producer, per record:
 *     store low RELAXED             (the bytes about to be reused are given up)
 *     fence RELEASE                 (orders the low store before the record's stores, below)
 *     write marker, header, payload (plain stores)
 *     store tail RELEASE            (publishes the record to an ACQUIRE load of tail)
 *   reader, per gather of records [pos, end):
 *     load tail ACQUIRE             (the records it names are visible, unless overwritten since)
 *     copy headers and payloads     (plain loads, each header bounds-checked before use)
 *     fence ACQUIRE, load low RELAXED; the copy is good only if low <= pos.
 *   If any byte the reader copied came from a later write, that write followed the producer's
 *   release fence, so the reader's acquire fence makes the low store before it visible: the
 *   reader sees low > pos and drops the copy (the fence-fence synchronisation of the seqlock
 *   pattern; Boehm, "Can seqlocks get along with programming language memory models?", 2012).
 *   Data moves with plain memcpy as in the Linux kernel's seqlocks; a torn copy is never used.
 *   Orders for a record reach a worker through an SPSC control ring (spsc_ring.h) written after
 *   the record's publication, whose RELEASE/ACQUIRE pair carries the record's visibility too.
 *
 * The reader trusts nothing in the mapping: every header is bounds-checked before a byte is
 * copied, and a record that is not the entry the order names is reported, never sent.
 */
#ifndef ESC_ENTRY_RING_H
#define ESC_ENTRY_RING_H

#include <stddef.h>
#include <stdint.h>

#define ESC_ENTRY_MAGIC 0x0152544E45435345ULL /* "ESCENTR\x01" little-endian */
#define ESC_ENTRY_HEADER_BYTES 256u
#define ESC_ENTRY_RECORD_HEAD 24u
#define ESC_ENTRY_WRAP 0xFFFFFFFFFFFFFFFFULL
#define ESC_ENTRY_MIN_CAPACITY 4096u
#define ESC_ENTRY_MAX_CAPACITY 0x80000000ULL

#define ESC_ENTRY_OK 0
#define ESC_ENTRY_TOO_LARGE (-2)
#define ESC_ENTRY_BAD_MAPPING (-4)
/* gather: the records were overwritten before or while they were copied. */
#define ESC_ENTRY_STALE (-5)
/* gather: a position does not hold the entry named (or is not published yet): a wrong order. */
#define ESC_ENTRY_MISMATCH (-6)
/* gather: out is too small for the entries. */
#define ESC_ENTRY_NO_ROOM (-7)

typedef struct {
    uint8_t *base;      /* start of the mapping */
    uint8_t *data;      /* base + ESC_ENTRY_HEADER_BYTES */
    uint64_t capacity;  /* copied at attach and checked against the mapping size */
} esc_entry_ring;

/* Format a fresh ring in mem (64-byte aligned); capacity is the largest power of two that fits. */
int esc_entry_ring_init(esc_entry_ring *ring, void *mem, size_t mem_bytes);

/* Attach to a ring another process formatted; checks magic and that capacity fits. */
int esc_entry_ring_attach(esc_entry_ring *ring, void *mem, size_t mem_bytes);

/* Largest payload one record may carry (it then fits whatever the wrap position). */
uint64_t esc_entry_ring_max_payload(const esc_entry_ring *ring);

uint64_t esc_entry_ring_tail(const esc_entry_ring *ring);
uint64_t esc_entry_ring_low(const esc_entry_ring *ring);

/* Producer: publish one entry; *pos is its record's position. ESC_ENTRY_OK or TOO_LARGE. */
int esc_entry_ring_append(esc_entry_ring *ring, uint64_t index, uint64_t term, const uint8_t *payload,
                          uint64_t length, uint64_t *pos);

/* Reader: a walk over consecutive records from a position, one entry at a time. */
typedef struct {
    uint64_t cur;   /* position of the next record (or of a wrap marker before it) */
    uint64_t tail;  /* the producer's tail, loaded ACQUIRE when the walk began */
} esc_entry_cursor;

/* Start a walk at pos (8-aligned, else ESC_ENTRY_MISMATCH). */
int esc_entry_cursor_begin(const esc_entry_ring *ring, esc_entry_cursor *cursor, uint64_t pos);

/* The next record, which must hold entry `index`: its term, payload (pointing INTO the ring: a
 * later overwrite can change those bytes, see esc_entry_ring_check) and length. ESC_ENTRY_OK, or
 * ESC_ENTRY_STALE / ESC_ENTRY_MISMATCH (for the walk that began at walk_pos). Every header is
 * bounds-checked before use: whatever the mapping holds, the payload lies inside the ring. */
int esc_entry_cursor_next(const esc_entry_ring *ring, esc_entry_cursor *cursor, uint64_t walk_pos, uint64_t index,
                          uint64_t *term, const uint8_t **payload, uint32_t *length);

/* The seqlock check: ESC_ENTRY_OK when no byte at a position >= pos had been given up for
 * overwriting when this is called, so every read of those bytes made before the call (by this
 * thread, or by the kernel on its behalf in a system call that returned) saw what was published
 * there; ESC_ENTRY_STALE otherwise. */
int esc_entry_ring_check(const esc_entry_ring *ring, uint64_t pos);

/* Reader: copy entries lo..hi (the record at pos is lo, each next record the next index) into
 * out: first the wire table of the AppendEntries message (u64 term, u32 length per entry,
 * little-endian; eventstream/transport/peer_codec.py), then the payloads back to back. Returns
 * the bytes written (>= 0), or ESC_ENTRY_STALE, ESC_ENTRY_MISMATCH, ESC_ENTRY_NO_ROOM. Nothing in
 * out is meaningful unless the result is >= 0. */
int64_t esc_entry_ring_gather(const esc_entry_ring *ring, uint64_t pos, uint64_t lo, uint64_t hi, uint8_t *out,
                              size_t room);

#endif /* ESC_ENTRY_RING_H */
