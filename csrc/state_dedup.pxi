# The dedup table and the hashes:
# part of the eventstream.state._state extension; csrc/_state.pyx includes it after the
# declarations and shared names it uses.

class DedupFullError(Exception):
    """The dedup table holds its configured maximum of ids; expire some before adding more."""


cdef class DedupView:
    """Frozen entries of a DedupTable (see DedupTable.freeze); safe to read from another thread
    while the table keeps applying."""

    cdef esc_dedup_view view

    def __dealloc__(self):
        esc_dedup_view_release(&self.view)

    def __len__(self):
        return self.view.tail - self.view.head

    def export_range(self, uint64_t first, uint64_t count):
        """Entries first .. first+count-1 (arrival order) in the export_entries layout."""
        cdef uint64_t total = self.view.tail - self.view.head
        if first > total or count > total - first:
            raise IndexError(f"entries [{first}, {first + count}) of a view holding {total}")
        out = PyBytes_FromStringAndSize(NULL, count * ESC_DEDUP_ENTRY_BYTES)
        cdef char *dst = PyBytes_AS_STRING(out)
        cdef uint64_t i = 0, run, seq
        with nogil:
            while i < count:
                seq = self.view.head + first + i
                # Entries are contiguous inside a chunk: copy a chunk's run at once.
                run = ESC_DEDUP_CHUNK_ENTRIES - (seq & (ESC_DEDUP_CHUNK_ENTRIES - 1))
                if run > count - i:
                    run = count - i
                memcpy(dst + i * ESC_DEDUP_ENTRY_BYTES, esc_dedup_view_at(&self.view, first + i),
                       run * ESC_DEDUP_ENTRY_BYTES)
                i += run
        return out

    def pieces(self, uint64_t entries_per_piece=65536):
        """The export_entries image in pieces of at most entries_per_piece entries."""
        cdef uint64_t total = self.view.tail - self.view.head
        cdef uint64_t first = 0
        while first < total:
            count = min(entries_per_piece, total - first)
            yield self.export_range(first, count)
            first += count


def routing_hash(const uint8_t[::1] key):
    """MurmurHash3 x86_32 of `key`, seed 0, unsigned: equals mmh3.hash(key, signed=False)."""
    return esc_murmur3_32(&key[0] if key.shape[0] else <const uint8_t *>b"", key.shape[0], 0)


def id_digest(const uint8_t[::1] event_id):
    """(h1, h2) of MurmurHash3 x64_128, seed 0: mmh3.hash128(id) == h2 << 64 | h1."""
    cdef uint64_t h1, h2
    esc_murmur3_128(&event_id[0] if event_id.shape[0] else <const uint8_t *>b"",
                    event_id.shape[0], 0, &h1, &h2)
    return h1, h2


@cython.final  # so apply's per-event insert() is a direct, inlinable call, not a vtable one
cdef class DedupTable:
    """Remembered event ids: 128-bit digests with their original (queue, offset), in arrival order.

    Two classes of ids, each in its own arrival order so each expires by its own cut-off:
    ids the caller chose (kept for dedup_window_ms) and ids the client library generated
    (batch_codec.h's ESC_EVENT_ID_GENERATED; kept for the shorter dedup_generated_window_ms,
    since nobody but that library's retry loop can ever send them again). An id's class is part
    of its identity: each class is checked only against itself.

    Invariant: at most `ids_max` ids in both classes together; a full table refuses adds
    (DedupFullError) rather than forgetting an id early, because forgetting early would let a
    retry apply twice.
    """

    cdef esc_dedup_table table
    cdef esc_dedup_table generated
    cdef uint64_t cap

    def __cinit__(self, uint64_t ids_max=0):
        esc_dedup_init(&self.table, ESC_DEDUP_IDS_MAX)
        esc_dedup_init(&self.generated, ESC_DEDUP_IDS_MAX)
        self.cap = ids_max if 0 < ids_max <= ESC_DEDUP_IDS_MAX else ESC_DEDUP_IDS_MAX

    def __dealloc__(self):
        esc_dedup_free(&self.table)
        esc_dedup_free(&self.generated)

    def __len__(self):
        return esc_dedup_count(&self.table) + esc_dedup_count(&self.generated)

    @property
    def generated_count(self):
        """How many of the remembered ids the client library generated."""
        return esc_dedup_count(&self.generated)

    @property
    def ids_max(self):
        return self.cap

    def set_ids_max(self, uint64_t ids_max):
        """Change the cap; below the current count, adds are refused until enough expire."""
        self.cap = ids_max if 0 < ids_max <= ESC_DEDUP_IDS_MAX else ESC_DEDUP_IDS_MAX

    @property
    def memory_bytes(self):
        """Bytes held by the tables' slots and entry chunks."""
        return esc_dedup_bytes(&self.table) + esc_dedup_bytes(&self.generated)

    cdef inline int insert(self, bint generated, uint64_t h1, uint64_t h2, int32_t queue, int64_t offset,
                    int64_t first_seen_us, const esc_dedup_entry **existing) noexcept nogil:
        """esc_dedup_insert into the id's class, under the cap the two classes share."""
        cdef esc_dedup_table *t = &self.generated if generated else &self.table
        cdef const esc_dedup_table *other = &self.table if generated else &self.generated
        cdef uint64_t others = other.tail - other.head
        t.ids_max = self.cap - others if self.cap > others else 0
        return esc_dedup_insert(t, h1, h2, queue, offset, first_seen_us, existing)

    cdef inline void prefetch(self, bint generated, uint64_t h1) noexcept nogil:
        esc_dedup_prefetch(&self.generated if generated else &self.table, h1)

    def add(self, const uint8_t[::1] event_id, int32_t queue, int64_t offset,
            int64_t first_seen_us, bint generated=False):
        """Check-and-add: None when the id is new (now remembered), else the original
        (queue, offset)."""
        cdef uint64_t h1, h2
        cdef const esc_dedup_entry *existing = NULL
        esc_murmur3_128(&event_id[0] if event_id.shape[0] else <const uint8_t *>b"",
                        event_id.shape[0], 0, &h1, &h2)
        rc = self.insert(generated, h1, h2, queue, offset, first_seen_us, &existing)
        return self._add_result(rc, existing)

    cdef object _add_result(self, int rc, const esc_dedup_entry *existing):
        if rc == ESC_DEDUP_INSERTED:
            return None
        if rc == ESC_DEDUP_PRESENT:
            return (existing.queue, existing.offset)
        if rc == ESC_DEDUP_FULL:
            raise DedupFullError(f"dedup table holds its maximum of {self.cap} ids")
        raise MemoryError("dedup table could not grow")

    def lookup(self, const uint8_t[::1] event_id, bint generated=False):
        """The original (queue, offset) of a remembered id, or None."""
        cdef uint64_t h1, h2
        esc_murmur3_128(&event_id[0] if event_id.shape[0] else <const uint8_t *>b"",
                        event_id.shape[0], 0, &h1, &h2)
        cdef const esc_dedup_entry *e = esc_dedup_find(&self.generated if generated else &self.table,
                                                       h1, h2)
        if e == NULL:
            return None
        return (e.queue, e.offset)

    def expire(self, int64_t cutoff_us, generated_cutoff_us=None):
        """Forget ids, oldest arrival first, while first seen before the cut-off of their class
        (generated ids: generated_cutoff_us, or cutoff_us when it is None); returns the count.

        An older id that arrived after a newer one waits for it: ids are kept a little longer,
        never forgotten early, and the result depends only on the applied commands.
        """
        cdef int64_t generated_cutoff = cutoff_us if generated_cutoff_us is None else generated_cutoff_us
        cdef uint64_t n
        with nogil:
            n = esc_dedup_expire(&self.table, cutoff_us)
            n += esc_dedup_expire(&self.generated, generated_cutoff)
        return n

    def freeze(self):
        """(caller ids, generated ids) as DedupViews of the entries as they are now: costs one
        pointer per 65,536 ids, and the table goes on changing while the views stay as they
        were (chunks are shared)."""
        return _freeze(&self.table), _freeze(&self.generated)

    def export_entries(self, bint generated=False):
        """One class's entries in arrival order as packed 36-byte little-endian records:
        h1 u64, h2 u64, offset i64, first_seen_us i64, queue i32."""
        view = _freeze(&self.generated if generated else &self.table)
        return view.export_range(0, len(view))

    def import_entries(self, const uint8_t[::1] packed, bint generated=False):
        """Append entries exported by export_entries to one class (arrival order kept). Refuses
        a partial record or a digest already present, which only a damaged image can contain."""
        cdef Py_ssize_t n = packed.shape[0]
        if n % ESC_DEDUP_ENTRY_BYTES:
            raise ValueError(f"dedup image of {n} bytes is not a whole number of "
                             f"{ESC_DEDUP_ENTRY_BYTES}-byte entries")
        cdef Py_ssize_t i
        cdef int rc = ESC_DEDUP_INSERTED
        cdef esc_dedup_entry e
        cdef const esc_dedup_entry *existing = NULL
        with nogil:
            i = 0
            while i < n:
                memcpy(&e, &packed[i], ESC_DEDUP_ENTRY_BYTES)
                rc = self.insert(generated, e.h1, e.h2, e.queue, e.offset, e.first_seen_us, &existing)
                if rc != ESC_DEDUP_INSERTED:
                    break
                i += ESC_DEDUP_ENTRY_BYTES
        if rc == ESC_DEDUP_PRESENT:
            raise ValueError(f"dedup image repeats a digest at byte {i}")
        self._add_result(rc, existing)


cdef DedupView _freeze(const esc_dedup_table *t):
    cdef DedupView view = DedupView.__new__(DedupView)
    if esc_dedup_view_take(t, &view.view) != 0:
        raise MemoryError()
    return view
