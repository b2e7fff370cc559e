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
 *     6  u16  pad_code     0 when the header sits at its record boundary; after padding
 *                          (see below), the padding length minus ESC_WAL_HEADER_BYTES
 *     8  u32  payload_len  0 .. ESC_WAL_PAYLOAD_BYTES_MAX
 *    12  u64  index        Raft log index; consecutive records have consecutive indexes
 *    20  u64  term         Raft term; never decreases along the log (Raft paper 5.3)
 *    28  payload_len bytes of payload
 *
 * Padding. A record starts at a record boundary: offset 0 of the segment, or the end of the
 * previous record. Its header is normally right there. A writer may instead leave zero bytes
 * there (a hole in the file) so that the payload starts at a multiple of
 * ESC_WAL_PAYLOAD_ALIGN_BYTES; then the header sits at the first file offset h >= boundary +
 * ESC_WAL_HEADER_BYTES with h + ESC_WAL_HEADER_BYTES a multiple of ESC_WAL_PAYLOAD_ALIGN_BYTES,
 * and its pad_code says h - boundary - ESC_WAL_HEADER_BYTES. A reader at a boundary whose
 * version byte (boundary + 4) is zero looks for the header there and requires pad_code to
 * match. Padding is at least a header long (so a reader always finds that zero byte) and less
 * than ESC_WAL_PAYLOAD_ALIGN_BYTES + ESC_WAL_HEADER_BYTES, which is why pad_code counts from a
 * header's length: it then fits 16 bits. Nothing in the padding but that byte is ever read.
 *
 * Why padding: a large payload at an aligned file offset is copied by the kernel into whole
 * large page-cache folios, as a plain write of the same bytes is, instead of a run of small
 * folios around an odd offset (ext4 with large folios: a 64 KiB append took about 18 us of CPU
 * at an odd offset against 13 us aligned; 64 KiB alignment saved 0.7 us more than 32 KiB did,
 * one folio per 64 KiB instead of two). Header and payload stay adjacent, so one write carries
 * both. The price is address space, and disk space where blocks were preallocated: up to one
 * alignment unit per padded record, which is why only payloads of at least
 * ESC_WAL_ALIGN_PAYLOAD_BYTES_MIN are padded. Records written before padding existed had 0 in
 * pad_code (then "reserved") and read the same, so the version stays 1. The reverse does not
 * hold: code from before padding stops at the zero version byte, so in the last segment it
 * would take a padded record for a torn tail and cut it, and refuse any earlier segment. There
 * are no released users; do not open a log with an older build.
 *
 * A record is accepted only when every field is valid and the CRC matches; zero-filled space
 * and a record cut short by the end of the file are reported as such, so recovery can tell a
 * torn tail from damage in the middle. Zero-filled space reads as padding whose record is
 * missing or cut short: the record boundary, where recovery cuts, stays the same.
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
/* Padded payloads start at a multiple of this. Writers that pad (SegmentFile.write decides
 * when) do it for payloads of at least ESC_WAL_ALIGN_PAYLOAD_BYTES_MIN bytes, so padding never
 * takes more room than the payload it aligns. */
#define ESC_WAL_PAYLOAD_ALIGN_BYTES 65536u
#define ESC_WAL_ALIGN_PAYLOAD_BYTES_MIN 65536u

enum esc_wal_status {
    ESC_WAL_OK = 0,
    ESC_WAL_SHORT_HEADER,  /* fewer than ESC_WAL_HEADER_BYTES left: a torn write */
    ESC_WAL_SHORT_PAYLOAD, /* payload runs past the end of the data: a torn write */
    ESC_WAL_BAD_VERSION,
    ESC_WAL_BAD_TYPE,
    ESC_WAL_BAD_PADDING,   /* pad_code does not match where the header was found */
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
    case ESC_WAL_BAD_PADDING: return "padding length does not match the header's place";
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
    uint32_t pad_bytes; /* padding before the header, 0 if none */
    uint8_t type;
    uint64_t index;
    uint64_t term;
} esc_wal_record_t;

static inline size_t esc_wal_record_bytes(size_t payload_len)
{
    return ESC_WAL_HEADER_BYTES + payload_len;
}

/* Padding before the header of a record whose boundary is at file offset `boundary`, for a
 * writer that wants its payload aligned: 0 when it already is, else the distance to the first
 * header place allowed (see the layout above). */
static inline size_t esc_wal_align_pad_bytes(uint64_t boundary)
{
    const uint64_t align = ESC_WAL_PAYLOAD_ALIGN_BYTES;
    if ((boundary + ESC_WAL_HEADER_BYTES) % align == 0)
        return 0;
    uint64_t payload_at = (boundary + 2 * ESC_WAL_HEADER_BYTES + align - 1) / align * align;
    return (size_t)(payload_at - ESC_WAL_HEADER_BYTES - boundary);
}

/*
 * Writes the ESC_WAL_HEADER_BYTES header at `dst` for `payload`, which may lie anywhere (right
 * after the header, or elsewhere for a vectored write); the CRC covers both. `pad_bytes` is
 * the padding the caller leaves before the header: 0, or an esc_wal_align_pad_bytes() result.
 * Returns the header and payload size.
 */
static inline size_t esc_wal_seal_header(uint8_t *dst, uint8_t type, uint32_t pad_bytes,
                                         const uint8_t *payload, uint32_t payload_len,
                                         uint64_t index, uint64_t term)
{
    dst[4] = ESC_WAL_VERSION;
    dst[5] = type;
    esc_store_u16(dst + 6, (uint16_t)(pad_bytes ? pad_bytes - ESC_WAL_HEADER_BYTES : 0));
    esc_store_u32(dst + 8, payload_len);
    esc_store_u64(dst + 12, index);
    esc_store_u64(dst + 20, term);
    uint32_t crc = esc_crc32c(0, dst + 4, ESC_WAL_HEADER_BYTES - 4);
    esc_store_u32(dst, esc_crc32c(crc, payload, payload_len));
    return esc_wal_record_bytes(payload_len);
}

/*
 * esc_wal_seal_header for the common case: no padding, and the payload was already copied
 * right after the header, at dst + ESC_WAL_HEADER_BYTES. Returns the record size.
 */
static inline size_t esc_wal_seal_record(uint8_t *dst, uint8_t type, uint32_t payload_len,
                                         uint64_t index, uint64_t term)
{
    return esc_wal_seal_header(dst, type, 0, dst + ESC_WAL_HEADER_BYTES, payload_len, index,
                               term);
}

/* Offset in `buf` of the header of the record whose boundary is `offset` (the buffer starts at
 * file offset `file_base`), given that ESC_WAL_HEADER_BYTES bytes at `offset` are readable. */
static inline size_t esc_wal_header_offset(const uint8_t *buf, size_t offset, uint64_t file_base)
{
    if (buf[offset + 4] != 0)
        return offset;
    return offset + esc_wal_align_pad_bytes(file_base + offset);
}

/*
 * Parses and CRC-checks the record whose boundary is at `offset` of `buf`, a piece of a segment
 * that starts at file offset `file_base`; never reads at or past `len`. On success fills `rec`
 * and `*next` (the next boundary). Sequence checks (index, term) are the caller's, since only
 * it knows the previous record.
 */
static inline int esc_wal_read_record_at(const uint8_t *buf, size_t len, size_t offset,
                                         uint64_t file_base, esc_wal_record_t *rec, size_t *next)
{
    if (offset > len || len - offset < ESC_WAL_HEADER_BYTES)
        return ESC_WAL_SHORT_HEADER;
    size_t at = esc_wal_header_offset(buf, offset, file_base);
    if (at > len || len - at < ESC_WAL_HEADER_BYTES)
        return ESC_WAL_SHORT_HEADER;
    const uint8_t *h = buf + at;
    if (h[4] != ESC_WAL_VERSION)
        return ESC_WAL_BAD_VERSION;
    if (h[5] != ESC_WAL_TYPE_ENTRY)
        return ESC_WAL_BAD_TYPE;
    size_t pad_bytes = at - offset;
    if (esc_load_u16(h + 6) != (pad_bytes ? pad_bytes - ESC_WAL_HEADER_BYTES : 0))
        return ESC_WAL_BAD_PADDING;
    uint32_t payload_len = esc_load_u32(h + 8);
    if (payload_len > ESC_WAL_PAYLOAD_BYTES_MAX)
        return ESC_WAL_TOO_LARGE;
    size_t size = esc_wal_record_bytes(payload_len);
    if (len - at < size)
        return ESC_WAL_SHORT_PAYLOAD;
    if (esc_crc32c(0, h + 4, size - 4) != esc_load_u32(h))
        return ESC_WAL_BAD_CRC;
    rec->type = h[5];
    rec->payload_len = payload_len;
    rec->pad_bytes = (uint32_t)pad_bytes;
    rec->index = esc_load_u64(h + 12);
    rec->term = esc_load_u64(h + 20);
    rec->payload = h + ESC_WAL_HEADER_BYTES;
    *next = at + size;
    return ESC_WAL_OK;
}

/* esc_wal_read_record_at for a buffer that starts at offset 0 of its file. */
static inline int esc_wal_read_record(const uint8_t *buf, size_t len, size_t offset,
                                      esc_wal_record_t *rec, size_t *next)
{
    return esc_wal_read_record_at(buf, len, offset, 0, rec, next);
}

/* After esc_wal_read_record_at reported the record at `offset` cut short: how many bytes from
 * `offset` would hold it, going by the fields visible so far (a lower bound while the header
 * itself is cut). */
static inline size_t esc_wal_bytes_needed(const uint8_t *buf, size_t len, size_t offset,
                                          uint64_t file_base)
{
    if (len - offset < ESC_WAL_HEADER_BYTES)
        return ESC_WAL_HEADER_BYTES;
    size_t at = esc_wal_header_offset(buf, offset, file_base);
    if (at > len || len - at < ESC_WAL_HEADER_BYTES)
        return at - offset + ESC_WAL_HEADER_BYTES;
    return at - offset + esc_wal_record_bytes(esc_load_u32(buf + at + 8));
}

#endif /* ESC_WAL_FORMAT_H */
