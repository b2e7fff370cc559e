/*
 * Event batch layout: the payload of one Raft entry carrying up to ESC_BATCH_EVENTS_MAX events.
 * This header is the only parser of the layout; csrc/_codec.pyx and any other extension (the
 * state machine applies batches natively) include it. All functions are static inline, take
 * explicit lengths, and never read past `len`. Pure-Python twin: eventstream/storage/codec_reference.py.
 *
 * All integers little-endian. Offsets in bytes.
 *
 *   Batch header (ESC_BATCH_HEADER_BYTES = 12)
 *     0  u8   version            ESC_BATCH_VERSION (1)
 *     1  u8   flags              0 (reserved)
 *     2  u16  reserved           0
 *     4  u32  event_count        0 .. ESC_BATCH_EVENTS_MAX
 *     8  u32  batch_bytes        whole batch including this header; must equal the buffer length
 *   then event_count events, back to back, no padding:
 *
 *   Event (ESC_EVENT_HEADER_BYTES = 24, then variable fields)
 *     0  u8   flags              bit0 event_id present, bit1 key present, bit2 queue present;
 *                                other bits 0
 *     1  u8   reserved           0
 *     2  u16  id_len             0 .. ESC_EVENT_ID_BYTES_MAX; 0 when the id is absent
 *     4  u16  key_len            0 .. ESC_EVENT_KEY_BYTES_MAX; 0 when the key is absent
 *     6  u16  reserved           0
 *     8  u32  queue              explicit queue < 2^31; 0 when absent
 *    12  u32  payload_len
 *    16  i64  timestamp_us       microseconds since the Unix epoch, written by the leader
 *    24  id_len bytes of event_id, key_len bytes of key, payload_len bytes of payload
 *   An event's encoded size (header + id + key + payload) is at most ESC_EVENT_BYTES_MAX.
 *
 * The encoding is canonical: one batch has exactly one byte string, so a decoder rejects
 * nonzero reserved fields and lengths of absent fields instead of ignoring them.
 */
#ifndef ESC_BATCH_CODEC_H
#define ESC_BATCH_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "byte_order.h"

#define ESC_BATCH_VERSION 1
#define ESC_BATCH_HEADER_BYTES 12
#define ESC_EVENT_HEADER_BYTES 24
#define ESC_BATCH_EVENTS_MAX 65536
#define ESC_BATCH_BYTES_MAX (64u * 1024u * 1024u)
#define ESC_EVENT_BYTES_MAX (1024u * 1024u)
#define ESC_EVENT_ID_BYTES_MAX 256
#define ESC_EVENT_KEY_BYTES_MAX 1024
#define ESC_QUEUE_LIMIT 0x80000000u /* queue numbers are < 2^31 */

#define ESC_EVENT_HAS_ID 0x01
#define ESC_EVENT_HAS_KEY 0x02
#define ESC_EVENT_HAS_QUEUE 0x04
#define ESC_EVENT_FLAGS_KNOWN 0x07

/* Why a batch was rejected; esc_batch_status_text() names each for error messages. */
enum esc_batch_status {
    ESC_BATCH_OK = 0,
    ESC_BATCH_SHORT_HEADER,
    ESC_BATCH_BAD_VERSION,
    ESC_BATCH_BAD_RESERVED,
    ESC_BATCH_TOO_MANY_EVENTS,
    ESC_BATCH_TOO_LARGE,
    ESC_BATCH_LENGTH_MISMATCH,
    ESC_BATCH_SHORT_EVENT,
    ESC_BATCH_BAD_EVENT_FLAGS,
    ESC_BATCH_ID_TOO_LONG,
    ESC_BATCH_KEY_TOO_LONG,
    ESC_BATCH_EVENT_TOO_LARGE,
    ESC_BATCH_BAD_QUEUE,
    ESC_BATCH_ABSENT_FIELD_SET,
    ESC_BATCH_TRAILING_BYTES,
};

static inline const char *esc_batch_status_text(int status)
{
    switch (status) {
    case ESC_BATCH_OK: return "ok";
    case ESC_BATCH_SHORT_HEADER: return "buffer shorter than the batch header";
    case ESC_BATCH_BAD_VERSION: return "unknown batch format version";
    case ESC_BATCH_BAD_RESERVED: return "reserved field is not zero";
    case ESC_BATCH_TOO_MANY_EVENTS: return "event count above the limit";
    case ESC_BATCH_TOO_LARGE: return "batch bytes above the limit";
    case ESC_BATCH_LENGTH_MISMATCH: return "batch_bytes field differs from the buffer length";
    case ESC_BATCH_SHORT_EVENT: return "event runs past the end of the batch";
    case ESC_BATCH_BAD_EVENT_FLAGS: return "unknown event flag bits";
    case ESC_BATCH_ID_TOO_LONG: return "event_id longer than the limit";
    case ESC_BATCH_KEY_TOO_LONG: return "key longer than the limit";
    case ESC_BATCH_EVENT_TOO_LARGE: return "event bytes above the limit";
    case ESC_BATCH_BAD_QUEUE: return "queue number not below 2**31";
    case ESC_BATCH_ABSENT_FIELD_SET: return "absent field has a nonzero length or value";
    case ESC_BATCH_TRAILING_BYTES: return "bytes left after the last event";
    default: return "unknown error";
    }
}

/* One decoded event; pointers alias the batch buffer (no copies). */
typedef struct {
    const uint8_t *event_id; /* NULL when absent */
    const uint8_t *key;      /* NULL when absent */
    const uint8_t *payload;
    uint32_t id_len;
    uint32_t key_len;
    uint32_t payload_len;
    uint32_t queue;          /* meaningful only when flags & ESC_EVENT_HAS_QUEUE */
    int64_t timestamp_us;
    uint8_t flags;
} esc_event_t;

static inline size_t esc_event_encoded_bytes(size_t id_len, size_t key_len, size_t payload_len)
{
    return ESC_EVENT_HEADER_BYTES + id_len + key_len + payload_len;
}

/* Checks the batch header against `len`; on success stores the event count. */
static inline int esc_batch_read_header(const uint8_t *buf, size_t len, uint32_t *event_count)
{
    if (len < ESC_BATCH_HEADER_BYTES)
        return ESC_BATCH_SHORT_HEADER;
    if (buf[0] != ESC_BATCH_VERSION)
        return ESC_BATCH_BAD_VERSION;
    if (buf[1] != 0 || esc_load_u16(buf + 2) != 0)
        return ESC_BATCH_BAD_RESERVED;
    uint32_t count = esc_load_u32(buf + 4);
    uint32_t total = esc_load_u32(buf + 8);
    if (count > ESC_BATCH_EVENTS_MAX)
        return ESC_BATCH_TOO_MANY_EVENTS;
    if (total > ESC_BATCH_BYTES_MAX)
        return ESC_BATCH_TOO_LARGE;
    if ((size_t)total != len)
        return ESC_BATCH_LENGTH_MISMATCH;
    *event_count = count;
    return ESC_BATCH_OK;
}

/*
 * Parses the event starting at `offset` and stores the offset just past it in `*next`.
 * Every length is checked against `len` before any byte it covers is read.
 */
static inline int esc_batch_read_event(const uint8_t *buf, size_t len, size_t offset,
                                       esc_event_t *ev, size_t *next)
{
    if (offset > len || len - offset < ESC_EVENT_HEADER_BYTES)
        return ESC_BATCH_SHORT_EVENT;
    const uint8_t *h = buf + offset;
    uint8_t flags = h[0];
    if (flags & ~ESC_EVENT_FLAGS_KNOWN)
        return ESC_BATCH_BAD_EVENT_FLAGS;
    if (h[1] != 0 || esc_load_u16(h + 6) != 0)
        return ESC_BATCH_BAD_RESERVED;
    uint32_t id_len = esc_load_u16(h + 2);
    uint32_t key_len = esc_load_u16(h + 4);
    uint32_t queue = esc_load_u32(h + 8);
    uint32_t payload_len = esc_load_u32(h + 12);
    if (id_len > ESC_EVENT_ID_BYTES_MAX)
        return ESC_BATCH_ID_TOO_LONG;
    if (key_len > ESC_EVENT_KEY_BYTES_MAX)
        return ESC_BATCH_KEY_TOO_LONG;
    if ((!(flags & ESC_EVENT_HAS_ID) && id_len) || (!(flags & ESC_EVENT_HAS_KEY) && key_len) ||
        (!(flags & ESC_EVENT_HAS_QUEUE) && queue))
        return ESC_BATCH_ABSENT_FIELD_SET;
    if (queue >= ESC_QUEUE_LIMIT)
        return ESC_BATCH_BAD_QUEUE;
    /* payload_len is checked first so the sum below cannot wrap. */
    if (payload_len > ESC_EVENT_BYTES_MAX)
        return ESC_BATCH_EVENT_TOO_LARGE;
    size_t size = esc_event_encoded_bytes(id_len, key_len, payload_len);
    if (size > ESC_EVENT_BYTES_MAX)
        return ESC_BATCH_EVENT_TOO_LARGE;
    if (len - offset < size)
        return ESC_BATCH_SHORT_EVENT;
    const uint8_t *body = h + ESC_EVENT_HEADER_BYTES;
    ev->flags = flags;
    ev->id_len = id_len;
    ev->key_len = key_len;
    ev->payload_len = payload_len;
    ev->queue = queue;
    ev->timestamp_us = (int64_t)esc_load_u64(h + 16);
    ev->event_id = (flags & ESC_EVENT_HAS_ID) ? body : NULL;
    ev->key = (flags & ESC_EVENT_HAS_KEY) ? body + id_len : NULL;
    ev->payload = body + id_len + key_len;
    *next = offset + size;
    return ESC_BATCH_OK;
}

/*
 * Validates a whole batch in one pass. `offsets`, when not NULL, must hold event_count entries
 * (call esc_batch_read_header first to learn it) and receives each event's start offset.
 * On failure `*error_offset` is where the bad header or event starts.
 */
static inline int esc_batch_validate(const uint8_t *buf, size_t len, uint32_t *event_count,
                                     uint32_t *offsets, size_t *error_offset)
{
    uint32_t count = 0;
    esc_event_t ev;
    *error_offset = 0;
    int status = esc_batch_read_header(buf, len, &count);
    if (status != ESC_BATCH_OK)
        return status;
    size_t offset = ESC_BATCH_HEADER_BYTES;
    for (uint32_t i = 0; i < count; i++) {
        size_t next;
        status = esc_batch_read_event(buf, len, offset, &ev, &next);
        if (status != ESC_BATCH_OK) {
            *error_offset = offset;
            return status;
        }
        if (offsets)
            offsets[i] = (uint32_t)offset;
        offset = next;
    }
    if (offset != len) {
        *error_offset = offset;
        return ESC_BATCH_TRAILING_BYTES;
    }
    *event_count = count;
    return ESC_BATCH_OK;
}

static inline void esc_batch_write_header(uint8_t *dst, uint32_t event_count, uint32_t batch_bytes)
{
    dst[0] = ESC_BATCH_VERSION;
    dst[1] = 0;
    esc_store_u16(dst + 2, 0);
    esc_store_u32(dst + 4, event_count);
    esc_store_u32(dst + 8, batch_bytes);
}

/*
 * Writes one event at `dst` and returns the bytes written. The caller has checked the limits
 * and reserved esc_event_encoded_bytes(...) bytes.
 */
static inline size_t esc_batch_write_event(uint8_t *dst, const esc_event_t *ev)
{
    uint8_t flags = ev->flags & ESC_EVENT_FLAGS_KNOWN;
    uint32_t id_len = (flags & ESC_EVENT_HAS_ID) ? ev->id_len : 0;
    uint32_t key_len = (flags & ESC_EVENT_HAS_KEY) ? ev->key_len : 0;
    dst[0] = flags;
    dst[1] = 0;
    esc_store_u16(dst + 2, (uint16_t)id_len);
    esc_store_u16(dst + 4, (uint16_t)key_len);
    esc_store_u16(dst + 6, 0);
    esc_store_u32(dst + 8, (flags & ESC_EVENT_HAS_QUEUE) ? ev->queue : 0);
    esc_store_u32(dst + 12, ev->payload_len);
    esc_store_u64(dst + 16, (uint64_t)ev->timestamp_us);
    uint8_t *body = dst + ESC_EVENT_HEADER_BYTES;
    if (id_len)
        memcpy(body, ev->event_id, id_len);
    if (key_len)
        memcpy(body + id_len, ev->key, key_len);
    if (ev->payload_len)
        memcpy(body + id_len + key_len, ev->payload, ev->payload_len);
    return esc_event_encoded_bytes(id_len, key_len, ev->payload_len);
}

#endif /* ESC_BATCH_CODEC_H */
