/*
 * Queue segment record: how one stored event sits in a queue's segment file (issue 4, "Storage
 * of queues"). A segment file is these records back to back, nothing else; a segment holds the
 * dense offsets [base, base + count) and is named by its base offset.
 *
 * All integers little-endian.
 *   0   u32  event_bytes   size of the event that follows, <= ESC_EVENT_BYTES_MAX
 *   4   u32  crc32c        CRC-32C of bytes 8 .. 16 + event_bytes (offset and event)
 *   8   u64  offset        the event's offset in its queue; checked on every read
 *   16  event              exactly the bytes of one event of batch_codec.h, copied unchanged
 *                          from the applied batch (so the codec's one parser reads it back)
 *
 * The offset sits inside the checksum so a record read from the wrong place is caught as such.
 */
#ifndef ESC_QUEUE_RECORD_H
#define ESC_QUEUE_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "batch_codec.h"
#include "byte_order.h"
#include "crc32c.h"

#define ESC_QREC_HEADER_BYTES 16

enum esc_qrec_status {
    ESC_QREC_OK = 0,
    ESC_QREC_SHORT,
    ESC_QREC_TOO_LARGE,
    ESC_QREC_BAD_CRC,
    ESC_QREC_BAD_OFFSET,
    ESC_QREC_BAD_EVENT,
};

static inline const char *esc_qrec_status_text(int status)
{
    switch (status) {
    case ESC_QREC_OK: return "ok";
    case ESC_QREC_SHORT: return "record runs past the end of the data";
    case ESC_QREC_TOO_LARGE: return "record length above the event limit";
    case ESC_QREC_BAD_CRC: return "CRC-32C mismatch";
    case ESC_QREC_BAD_OFFSET: return "record holds a different offset than expected";
    case ESC_QREC_BAD_EVENT: return "stored event does not parse";
    default: return "unknown error";
    }
}

/* Writes the record of `event` (event_bytes long) at `dst`; returns the bytes written. */
static inline size_t esc_qrec_write(uint8_t *dst, uint64_t offset, const uint8_t *event,
                                    uint32_t event_bytes)
{
    esc_store_u32(dst, event_bytes);
    esc_store_u64(dst + 8, offset);
    memcpy(dst + ESC_QREC_HEADER_BYTES, event, event_bytes);
    esc_store_u32(dst + 4, esc_crc32c(0, dst + 8, 8 + (size_t)event_bytes));
    return ESC_QREC_HEADER_BYTES + (size_t)event_bytes;
}

/*
 * Checks the record at `pos` of `buf[0:len]` (length, CRC, expected offset, event layout) and
 * parses its event into `ev`; `*next` receives the position after it.
 */
static inline int esc_qrec_read(const uint8_t *buf, size_t len, size_t pos, uint64_t offset,
                                esc_event_t *ev, size_t *next)
{
    if (pos > len || len - pos < ESC_QREC_HEADER_BYTES)
        return ESC_QREC_SHORT;
    const uint8_t *r = buf + pos;
    uint32_t event_bytes = esc_load_u32(r);
    if (event_bytes > ESC_EVENT_BYTES_MAX)
        return ESC_QREC_TOO_LARGE;
    if (len - pos - ESC_QREC_HEADER_BYTES < event_bytes)
        return ESC_QREC_SHORT;
    if (esc_crc32c(0, r + 8, 8 + (size_t)event_bytes) != esc_load_u32(r + 4))
        return ESC_QREC_BAD_CRC;
    if (esc_load_u64(r + 8) != offset)
        return ESC_QREC_BAD_OFFSET;
    size_t event_end;
    if (esc_batch_read_event(r + ESC_QREC_HEADER_BYTES, event_bytes, 0, ev, &event_end) !=
            ESC_BATCH_OK ||
        event_end != event_bytes)
        return ESC_QREC_BAD_EVENT;
    *next = pos + ESC_QREC_HEADER_BYTES + event_bytes;
    return ESC_QREC_OK;
}

#endif /* ESC_QUEUE_RECORD_H */
