#include "dedup_table.h"

#include <stdlib.h>
#include <string.h>

#define LOW32(x) ((uint32_t)((x) & 0xffffffffu))

static inline uint64_t slot_make(uint64_t h1, uint64_t seq) {
    uint64_t fp = (uint64_t)(LOW32(h1) | 0x80000000u);
    return (fp << 32) | LOW32(seq);
}

static inline uint64_t slot_home(uint64_t slot, uint64_t mask) { return (slot >> 32) & mask; }

static inline uint64_t slot_seq(const esc_dedup_table *t, uint64_t slot) {
    /* Live seqs span less than 2^32, so the distance from head fits in 32 bits. */
    return t->head + (uint64_t)(uint32_t)(LOW32(slot) - LOW32(t->head));
}

/* A chunk is one allocation: a reference count, then the entries. The table holds one
 * reference to each chunk it lists, each view one more. */
#define CHUNK_HEADER_BYTES 16

static esc_dedup_entry *chunk_new(void) {
    uint8_t *base = malloc(CHUNK_HEADER_BYTES + ESC_DEDUP_CHUNK_ENTRIES * sizeof(esc_dedup_entry));
    if (base == NULL) return NULL;
    *(uint64_t *)base = 1;
    return (esc_dedup_entry *)(base + CHUNK_HEADER_BYTES);
}

static void chunk_acquire(esc_dedup_entry *chunk) {
    __atomic_add_fetch((uint64_t *)((uint8_t *)chunk - CHUNK_HEADER_BYTES), 1, __ATOMIC_RELAXED);
}

static void chunk_release(esc_dedup_entry *chunk) {
    uint8_t *base = (uint8_t *)chunk - CHUNK_HEADER_BYTES;
    if (__atomic_sub_fetch((uint64_t *)base, 1, __ATOMIC_ACQ_REL) == 0) free(base);
}

static inline esc_dedup_entry *entry_at_seq(const esc_dedup_table *t, uint64_t seq) {
    size_t chunk = (size_t)((seq >> ESC_DEDUP_CHUNK_SHIFT) - t->chunk_first);
    return &t->chunks[chunk][seq & (ESC_DEDUP_CHUNK_ENTRIES - 1)];
}

void esc_dedup_init(esc_dedup_table *t, uint64_t ids_max) {
    memset(t, 0, sizeof(*t));
    t->ids_max = ids_max == 0 || ids_max > ESC_DEDUP_IDS_MAX ? ESC_DEDUP_IDS_MAX : ids_max;
}

void esc_dedup_free(esc_dedup_table *t) {
    for (size_t i = 0; i < t->chunk_used; i++) chunk_release(t->chunks[i]);
    free(t->chunks);
    free(t->slots);
    uint64_t ids_max = t->ids_max;
    esc_dedup_init(t, ids_max);
}

uint64_t esc_dedup_count(const esc_dedup_table *t) { return t->tail - t->head; }

uint64_t esc_dedup_bytes(const esc_dedup_table *t) {
    return t->slot_count * sizeof(uint64_t) + t->chunk_capacity * sizeof(void *) +
           (uint64_t)t->chunk_used * ESC_DEDUP_CHUNK_ENTRIES * ESC_DEDUP_ENTRY_BYTES;
}

static int slots_resize(esc_dedup_table *t, uint64_t new_count) {
    uint64_t *fresh = calloc(new_count, sizeof(uint64_t));
    if (fresh == NULL) return -1;
    uint64_t mask = new_count - 1;
    for (uint64_t i = 0; i < t->slot_count; i++) {
        uint64_t s = t->slots[i];
        if (s == 0) continue;
        uint64_t j = slot_home(s, mask);
        while (fresh[j] != 0) j = (j + 1) & mask;
        fresh[j] = s;
    }
    free(t->slots);
    t->slots = fresh;
    t->slot_count = new_count;
    return 0;
}

const esc_dedup_entry *esc_dedup_find(const esc_dedup_table *t, uint64_t h1, uint64_t h2) {
    if (t->slot_count == 0) return NULL;
    uint64_t mask = t->slot_count - 1;
    uint64_t want = slot_make(h1, 0) >> 32;
    for (uint64_t i = h1 & mask;; i = (i + 1) & mask) {
        uint64_t s = t->slots[i];
        if (s == 0) return NULL;
        if ((s >> 32) != want) continue;
        const esc_dedup_entry *e = entry_at_seq(t, slot_seq(t, s));
        if (e->h1 == h1 && e->h2 == h2) return e;
    }
}

/* Appends an entry for seq t->tail to the chunks; 0, or -1 when out of memory. */
static int entry_append(esc_dedup_table *t, uint64_t h1, uint64_t h2, int32_t queue, int64_t offset,
                        int64_t first_seen_us) {
    if (t->chunk_used == 0) t->chunk_first = t->tail >> ESC_DEDUP_CHUNK_SHIFT;
    size_t chunk = (size_t)((t->tail >> ESC_DEDUP_CHUNK_SHIFT) - t->chunk_first);
    if (chunk == t->chunk_used) {
        if (t->chunk_used == t->chunk_capacity) {
            size_t cap = t->chunk_capacity == 0 ? 16 : t->chunk_capacity * 2;
            esc_dedup_entry **grown = realloc(t->chunks, cap * sizeof(*grown));
            if (grown == NULL) return -1;
            t->chunks = grown;
            t->chunk_capacity = cap;
        }
        esc_dedup_entry *fresh = chunk_new();
        if (fresh == NULL) return -1;
        t->chunks[t->chunk_used++] = fresh;
    }
    esc_dedup_entry *e = entry_at_seq(t, t->tail);
    e->h1 = h1;
    e->h2 = h2;
    e->offset = offset;
    e->first_seen_us = first_seen_us;
    e->queue = queue;
    return 0;
}

int esc_dedup_insert(esc_dedup_table *t, uint64_t h1, uint64_t h2, int32_t queue, int64_t offset,
                     int64_t first_seen_us, const esc_dedup_entry **existing) {
    /* One probe finds the id or the empty slot a new id takes (linear probing puts it at the
     * first empty slot of its run): the slot's cache line is fetched once per id. */
    uint64_t i = 0;
    if (t->slot_count != 0) {
        uint64_t mask = t->slot_count - 1;
        uint64_t want = slot_make(h1, 0) >> 32;
        for (i = h1 & mask;; i = (i + 1) & mask) {
            uint64_t s = t->slots[i];
            if (s == 0) break;
            if ((s >> 32) != want) continue;
            const esc_dedup_entry *e = entry_at_seq(t, slot_seq(t, s));
            if (e->h1 == h1 && e->h2 == h2) {
                if (existing != NULL) *existing = e;
                return ESC_DEDUP_PRESENT;
            }
        }
    }
    uint64_t count = t->tail - t->head;
    if (count >= t->ids_max) return ESC_DEDUP_FULL;
    if ((count + 1) * 4 > t->slot_count * 3) {
        uint64_t want = t->slot_count == 0 ? 1024 : t->slot_count * 2;
        if (want > ESC_DEDUP_SLOTS_MAX || slots_resize(t, want) != 0) return ESC_DEDUP_NO_MEMORY;
        /* The probe's slot belonged to the old table. */
        uint64_t mask = t->slot_count - 1;
        for (i = h1 & mask; t->slots[i] != 0; i = (i + 1) & mask) {
        }
    }
    if (entry_append(t, h1, h2, queue, offset, first_seen_us) != 0) return ESC_DEDUP_NO_MEMORY;
    t->slots[i] = slot_make(h1, t->tail);
    t->tail++;
    return ESC_DEDUP_INSERTED;
}

/* Removes the slot of entry `seq` by backward shift, so no tombstones slow later probes. */
static void slot_remove(esc_dedup_table *t, uint64_t h1, uint64_t seq) {
    uint64_t mask = t->slot_count - 1;
    uint64_t target = slot_make(h1, seq);
    uint64_t i = h1 & mask;
    while (t->slots[i] != target) i = (i + 1) & mask;
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        uint64_t s = t->slots[j];
        if (s == 0) break;
        uint64_t home = slot_home(s, mask);
        /* s may move into the hole at i only if its home is not in the cyclic range (i, j]. */
        int home_in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!home_in_range) {
            t->slots[i] = s;
            i = j;
        }
    }
    t->slots[i] = 0;
}

uint64_t esc_dedup_expire(esc_dedup_table *t, int64_t cutoff_us) {
    uint64_t expired = 0;
    while (t->head < t->tail) {
        const esc_dedup_entry *e = entry_at_seq(t, t->head);
        if (e->first_seen_us >= cutoff_us) break;
        slot_remove(t, e->h1, t->head);
        t->head++;
        expired++;
        if ((t->head >> ESC_DEDUP_CHUNK_SHIFT) > t->chunk_first && t->chunk_used > 0) {
            chunk_release(t->chunks[0]);
            memmove(t->chunks, t->chunks + 1, (t->chunk_used - 1) * sizeof(*t->chunks));
            t->chunk_used--;
            t->chunk_first++;
        }
    }
    return expired;
}


int esc_dedup_view_take(const esc_dedup_table *t, esc_dedup_view *v) {
    memset(v, 0, sizeof(*v));
    v->head = t->head;
    v->tail = t->tail;
    if (t->chunk_used == 0) return 0;
    v->chunks = malloc(t->chunk_used * sizeof(*v->chunks));
    if (v->chunks == NULL) return -1;
    for (size_t i = 0; i < t->chunk_used; i++) {
        chunk_acquire(t->chunks[i]);
        v->chunks[i] = t->chunks[i];
    }
    v->chunk_used = t->chunk_used;
    v->chunk_first = t->chunk_first;
    return 0;
}

void esc_dedup_view_release(esc_dedup_view *v) {
    for (size_t i = 0; i < v->chunk_used; i++) chunk_release(v->chunks[i]);
    free(v->chunks);
    memset(v, 0, sizeof(*v));
}

const esc_dedup_entry *esc_dedup_view_at(const esc_dedup_view *v, uint64_t i) {
    uint64_t seq = v->head + i;
    size_t chunk = (size_t)((seq >> ESC_DEDUP_CHUNK_SHIFT) - v->chunk_first);
    return &v->chunks[chunk][seq & (ESC_DEDUP_CHUNK_ENTRIES - 1)];
}
