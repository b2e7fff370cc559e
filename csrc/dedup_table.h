/* Compact exactly-once table of remembered event ids (docs/state-machine.md, "Dedup").
 *
 * An id is remembered as its 128-bit MurmurHash3 digest, never as the id bytes, together with the
 * (queue, offset) the event was stored at and the timestamp it was first seen with.
 *
 * Layout, chosen to stay under 64 bytes of memory per remembered id:
 *   entries  36-byte packed records in ARRIVAL order, stored in fixed chunks of 2^16 records.
 *            Entry number `seq` (monotonic, never reused) lives in chunk seq >> 16. Live entries
 *            are exactly seq in [head, tail). Expiry pops from head, so it costs time
 *            proportional to what expires, and a whole chunk is freed once head passes it.
 *   slots    open-addressing table (linear probing, load <= 3/4) of 8-byte slots:
 *            high 32 bits = low 32 bits of h1 with the top bit forced on (a fingerprint that is
 *            never zero, so 0 means empty), low 32 bits = seq mod 2^32. Because the slot count is
 *            at most 2^31, the home slot (h1 & mask) is recoverable from the fingerprint alone,
 *            so growth and backward-shift deletion never touch the entries.
 *   Memory: 36 B/entry + 8/(load) B/entry of slots = 36 + 10.7..21.3 B, plus < one chunk.
 *
 * Views (snapshots): an entry never changes once written, and only the head chunk is ever freed,
 * so a view of [head, tail) just holds references to the chunks it spans (a reference count per
 * chunk, updated atomically because a snapshot writer thread drops its view). Taking a view
 * costs one pointer per 65,536 ids; the table keeps applying (appends past the view's tail,
 * expiry that frees a chunk only when no view holds it).
 *
 * Invariant: tail - head < 2^32 (enforced by max_ids), so seq mod 2^32 identifies a live entry.
 * Invariant: every live entry has exactly one slot, and no two live entries share a digest.
 */
#ifndef ESC_DEDUP_TABLE_H
#define ESC_DEDUP_TABLE_H

#include <stddef.h>
#include <stdint.h>

/* Entries are exported to snapshots as they sit in memory, and snapshot images are defined as
 * little-endian: refuse to build where that would silently differ. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dedup_table: snapshot images assume a little-endian host"
#endif

#define ESC_DEDUP_CHUNK_SHIFT 16
#define ESC_DEDUP_CHUNK_ENTRIES ((uint64_t)1 << ESC_DEDUP_CHUNK_SHIFT)
#define ESC_DEDUP_SLOTS_MAX ((uint64_t)1 << 31)
#define ESC_DEDUP_IDS_MAX ((uint64_t)3 << 29) /* 3/4 of the largest slot table */

typedef struct __attribute__((packed)) {
    uint64_t h1;
    uint64_t h2;
    int64_t offset;
    int64_t first_seen_us;
    int32_t queue;
} esc_dedup_entry;

#define ESC_DEDUP_ENTRY_BYTES 36

typedef struct {
    uint64_t *slots;
    uint64_t slot_count; /* power of two, or 0 before the first insert */
    esc_dedup_entry **chunks;
    size_t chunk_capacity;
    size_t chunk_used;
    uint64_t chunk_first; /* chunk number held by chunks[0] */
    uint64_t head;
    uint64_t tail;
    uint64_t ids_max;
} esc_dedup_table;

typedef struct {
    esc_dedup_entry **chunks;
    size_t chunk_used;
    uint64_t chunk_first;
    uint64_t head;
    uint64_t tail;
} esc_dedup_view;

enum {
    ESC_DEDUP_INSERTED = 0,
    ESC_DEDUP_PRESENT = 1,
    ESC_DEDUP_NO_MEMORY = -1,
    ESC_DEDUP_FULL = -2,
};

void esc_dedup_init(esc_dedup_table *t, uint64_t ids_max);
void esc_dedup_free(esc_dedup_table *t);
uint64_t esc_dedup_count(const esc_dedup_table *t);
/* Returns the live entry with this digest, or NULL. */
const esc_dedup_entry *esc_dedup_find(const esc_dedup_table *t, uint64_t h1, uint64_t h2);
/* Check-and-add in one step: on ESC_DEDUP_PRESENT *existing points at the first entry. */
int esc_dedup_insert(esc_dedup_table *t, uint64_t h1, uint64_t h2, int32_t queue, int64_t offset,
                     int64_t first_seen_us, const esc_dedup_entry **existing);
/* A hint ahead of a probe for h1: start fetching its home slot's cache line, so a batch can
 * have many table misses in flight instead of one after another. Changes nothing. */
static inline void esc_dedup_prefetch(const esc_dedup_table *t, uint64_t h1) {
    if (t->slot_count != 0) __builtin_prefetch(&t->slots[h1 & (t->slot_count - 1)], 0, 3);
}
/* Forgets entries, oldest arrival first, while their first_seen_us < cutoff_us. */
uint64_t esc_dedup_expire(esc_dedup_table *t, int64_t cutoff_us);
/* A view of the live entries as they are now; 0, or -1 when out of memory. */
int esc_dedup_view_take(const esc_dedup_table *t, esc_dedup_view *v);
/* Drops a view's chunk references (thread-safe against the table's own frees). */
void esc_dedup_view_release(esc_dedup_view *v);
/* The i-th entry of a view in arrival order, 0 <= i < tail - head. */
const esc_dedup_entry *esc_dedup_view_at(const esc_dedup_view *v, uint64_t i);
/* Bytes held by slots and chunks (what the table costs, not what malloc rounds it up to). */
uint64_t esc_dedup_bytes(const esc_dedup_table *t);

#endif
