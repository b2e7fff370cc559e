/*
 * The frame: the unit of every byte stream between nodes and clients, and the one place its
 * layout is spelled in C. eventstream/transport/frames.py owns the format and its Python twin:
 *
 *   offset  size  field
 *   0       4     body length   bytes of body after this 8-byte head
 *   4       4     body CRC      CRC-32C of the body
 *   8       n     body
 *
 * A reader checks the length against its limit before it waits for the body (a huge prefix
 * cannot make it buffer), and the CRC before it hands the body on; after a bad frame the stream
 * has no boundary left to trust, so the connection closes.
 */
#ifndef ESC_FRAME_FORMAT_H
#define ESC_FRAME_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "byte_order.h"
#include "crc32c.h"

#define ESC_FRAME_HEAD_BYTES 8u

/* What esc_frame_next() found at the start of a buffer. */
enum esc_frame_state {
    ESC_FRAME_NEED_MORE = 0, /* the head or the body is not all there yet */
    ESC_FRAME_WHOLE = 1,     /* a whole frame whose CRC matches */
    ESC_FRAME_TOO_LONG = -1, /* the length prefix is above the reader's limit */
    ESC_FRAME_BAD_CRC = -2   /* the body does not match the head's CRC */
};

typedef struct {
    uint32_t body_len;     /* the length prefix (set once the head is there) */
    uint32_t head_crc;     /* the CRC the head carries */
    uint32_t body_crc;     /* the CRC of the body (set on WHOLE and BAD_CRC) */
} esc_frame;

/* Write the head of a frame whose body_len body bytes have CRC-32C body_crc. */
static inline void esc_frame_store_head_crc(uint8_t *head, uint32_t body_len, uint32_t body_crc)
{
    esc_store_u32(head, body_len);
    esc_store_u32(head + 4, body_crc);
}

/* Write the head for body[0..body_len). */
static inline void esc_frame_store_head(uint8_t *head, const uint8_t *body, uint32_t body_len)
{
    esc_frame_store_head_crc(head, body_len, esc_crc32c(0, body, body_len));
}

/* Look at the frame starting at buf (len bytes there); the body, when WHOLE, is at
 * buf + ESC_FRAME_HEAD_BYTES and the frame takes ESC_FRAME_HEAD_BYTES + f->body_len bytes. */
static inline int esc_frame_next(const uint8_t *buf, size_t len, uint64_t body_len_max, esc_frame *f)
{
    if (len < ESC_FRAME_HEAD_BYTES)
        return ESC_FRAME_NEED_MORE;
    f->body_len = esc_load_u32(buf);
    f->head_crc = esc_load_u32(buf + 4);
    if (f->body_len > body_len_max)
        return ESC_FRAME_TOO_LONG;
    if (len - ESC_FRAME_HEAD_BYTES < f->body_len)
        return ESC_FRAME_NEED_MORE;
    f->body_crc = esc_crc32c(0, buf + ESC_FRAME_HEAD_BYTES, f->body_len);
    return f->body_crc == f->head_crc ? ESC_FRAME_WHOLE : ESC_FRAME_BAD_CRC;
}

#endif /* ESC_FRAME_FORMAT_H */
