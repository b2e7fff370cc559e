/*
 * WAL record framing: every Raft log entry on disk is one record in a segment file. Segment
 * files hold records back to back with no file header; the file name carries the first index.
 * Pure-Python twin: eventstream/storage/wal_reference.py.
 *
 * All integers little-endian. Offsets in bytes.
 *
 *   Record header (ESC_WAL_HEADER_BYTES = 28)
 *     0  u32  crc          CRC-32C (csrc/crc32c.h) of bytes 4 .. 28 + payload_len, that is
 *                          every header field after the CRC followed by the payload
 *     4  u8   version      ESC_WAL_VERSION (1)
 *     5  u8   type         ESC_WAL_TYPE_ENTRY (1); other values are reserved
 *     6  u16  reserved     0
 *     8  u32  payload_len  0 .. ESC_WAL_PAYLOAD_BYTES_MAX
 *    12  u64  index        Raft log index; consecutive records have consecutive indexes
 *    20  u64  term         Raft term; never decreases along the log (Raft paper 5.3)
 *    28  payload_len bytes of payload
 *
 * A record is accepted only when every field is valid and the CRC matches; zero-filled space
 * (version 0) and a record cut short by the end of the file are reported as such, so recovery
 * can tell a torn tail from damage in the middle.
 */
#ifndef ESC_WAL_FORMAT_H
#define ESC_WAL_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "byte_order.h"
#include "crc32c.h"

#define ESC_WAL_VERSION 1
#define ESC_WAL_TYPE_ENTRY 1
#define ESC_WAL_HEADER_BYTES 28
#define ESC_WAL_PAYLOAD_BYTES_MAX (128u * 1024u * 1024u)

enum esc_wal_status {
    ESC_WAL_OK = 0,
    ESC_WAL_SHORT_HEADER,  /* fewer than ESC_WAL_HEADER_BYTES left: a torn write */
    ESC_WAL_SHORT_PAYLOAD, /* payload runs past the end of the data: a torn write */
    ESC_WAL_BAD_VERSION,
    ESC_WAL_BAD_TYPE,
    ESC_WAL_BAD_RESERVED,
    ESC_WAL_TOO_LARGE,
    ESC_WAL_BAD_CRC,
    ESC_WAL_BAD_INDEX,     /* not the index after the previous record */
    ESC_WAL_BAD_TERM,      /* term lower than the previous record's */
};

static inline const char *esc_wal_status_text(int status)
{
    switch (status) {
    case ESC_WAL_OK: return "ok";
    case ESC_WAL_SHORT_HEADER: return "record header cut short by the end of the data";
    case ESC_WAL_SHORT_PAYLOAD: return "record payload cut short by the end of the data";
    case ESC_WAL_BAD_VERSION: return "unknown record version";
    case ESC_WAL_BAD_TYPE: return "unknown record type";
    case ESC_WAL_BAD_RESERVED: return "reserved field is not zero";
    case ESC_WAL_TOO_LARGE: return "payload length above the limit";
    case ESC_WAL_BAD_CRC: return "CRC-32C mismatch";
    case ESC_WAL_BAD_INDEX: return "index out of sequence";
    case ESC_WAL_BAD_TERM: return "term lower than the previous record's";
    default: return "unknown error";
    }
}

typedef struct {
    const uint8_t *payload;
    uint32_t payload_len;
    uint8_t type;
    uint64_t index;
    uint64_t term;
} esc_wal_record_t;

static inline size_t esc_wal_record_bytes(size_t payload_len)
{
    return ESC_WAL_HEADER_BYTES + payload_len;
}

/*
 * Writes the ESC_WAL_HEADER_BYTES header at `dst` for `payload`, which may lie anywhere (right
 * after the header, or elsewhere for a vectored write); the CRC covers both. Returns the
 * record size.
 */
static inline size_t esc_wal_seal_header(uint8_t *dst, uint8_t type, const uint8_t *payload,
                                         uint32_t payload_len, uint64_t index, uint64_t term)
{
    dst[4] = ESC_WAL_VERSION;
    dst[5] = type;
    esc_store_u16(dst + 6, 0);
    esc_store_u32(dst + 8, payload_len);
    esc_store_u64(dst + 12, index);
    esc_store_u64(dst + 20, term);
    uint32_t crc = esc_crc32c(0, dst + 4, ESC_WAL_HEADER_BYTES - 4);
    esc_store_u32(dst, esc_crc32c(crc, payload, payload_len));
    return esc_wal_record_bytes(payload_len);
}

/*
 * esc_wal_seal_header for the common case: the payload was already copied right after the
 * header, at dst + ESC_WAL_HEADER_BYTES. Returns the record size.
 */
static inline size_t esc_wal_seal_record(uint8_t *dst, uint8_t type, uint32_t payload_len,
                                         uint64_t index, uint64_t term)
{
    return esc_wal_seal_header(dst, type, dst + ESC_WAL_HEADER_BYTES, payload_len, index, term);
}

/*
 * Parses and CRC-checks the record at `offset`; never reads at or past `len`. On success fills
 * `rec` and `*next`. Sequence checks (index, term) are the caller's, since only it knows the
 * previous record.
 */
static inline int esc_wal_read_record(const uint8_t *buf, size_t len, size_t offset,
                                      esc_wal_record_t *rec, size_t *next)
{
    if (offset > len || len - offset < ESC_WAL_HEADER_BYTES)
        return ESC_WAL_SHORT_HEADER;
    const uint8_t *h = buf + offset;
    if (h[4] != ESC_WAL_VERSION)
        return ESC_WAL_BAD_VERSION;
    if (h[5] != ESC_WAL_TYPE_ENTRY)
        return ESC_WAL_BAD_TYPE;
    if (esc_load_u16(h + 6) != 0)
        return ESC_WAL_BAD_RESERVED;
    uint32_t payload_len = esc_load_u32(h + 8);
    if (payload_len > ESC_WAL_PAYLOAD_BYTES_MAX)
        return ESC_WAL_TOO_LARGE;
    size_t size = esc_wal_record_bytes(payload_len);
    if (len - offset < size)
        return ESC_WAL_SHORT_PAYLOAD;
    if (esc_crc32c(0, h + 4, size - 4) != esc_load_u32(h))
        return ESC_WAL_BAD_CRC;
    rec->type = h[5];
    rec->payload_len = payload_len;
    rec->index = esc_load_u64(h + 12);
    rec->term = esc_load_u64(h + 20);
    rec->payload = h + ESC_WAL_HEADER_BYTES;
    *next = offset + size;
    return ESC_WAL_OK;
}

#endif /* ESC_WAL_FORMAT_H */
