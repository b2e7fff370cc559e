/* A worker's outgoing stream, entries sent from the entry ring; the safety argument is in
 * append_stream.h. */
#include "append_stream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "byte_order.h"
#include "crc32c.h"
#include "send_all.h"

void esc_append_head_store(uint8_t *body, const esc_append_head *head, uint32_t count)
{
    body[ESC_MESSAGE_AT_VERSION] = ESC_MESSAGE_VERSION;
    body[ESC_MESSAGE_AT_TYPE] = ESC_MESSAGE_APPEND;
    body[ESC_MESSAGE_AT_FLAGS] = 0;
    body[ESC_MESSAGE_AT_VOTERS] = 0;
    esc_store_u64(body + ESC_MESSAGE_AT_TO, head->to);
    esc_store_u64(body + ESC_MESSAGE_AT_SENDER, head->sender);
    esc_store_u64(body + ESC_MESSAGE_AT_TERM, head->term);
    esc_store_u64(body + ESC_MESSAGE_AT_INDEX, head->prev_index);
    esc_store_u64(body + ESC_MESSAGE_AT_LOG_TERM, head->prev_term);
    esc_store_u64(body + ESC_MESSAGE_AT_COMMIT, head->commit);
    esc_store_u64(body + ESC_MESSAGE_AT_HINT_INDEX, 0);
    esc_store_u64(body + ESC_MESSAGE_AT_READ_SEQ, 0);
    esc_store_u64(body + ESC_MESSAGE_AT_OFFSET, 0);
    esc_store_u32(body + ESC_MESSAGE_AT_ENTRIES, count);
    esc_store_u32(body + ESC_MESSAGE_AT_CONTEXT_LEN, 0);
    esc_store_u32(body + ESC_MESSAGE_AT_DATA_LEN, 0);
}

int64_t esc_append_frame_encode(const esc_entry_ring *ring, const esc_append_head *head, uint64_t pos, uint64_t lo,
                                uint64_t hi, uint8_t *out, size_t room)
{
    int64_t gathered;
    uint8_t *body = out + ESC_FRAME_HEAD_BYTES;
    if (room < ESC_FRAME_HEAD_BYTES + ESC_MESSAGE_HEAD_BYTES)
        return ESC_ENTRY_NO_ROOM;
    if (hi < lo || hi - lo >= 0xFFFFFFFFu)
        return ESC_ENTRY_MISMATCH;
    gathered = esc_entry_ring_gather(ring, pos, lo, hi, body + ESC_MESSAGE_HEAD_BYTES,
                                     room - ESC_FRAME_HEAD_BYTES - ESC_MESSAGE_HEAD_BYTES);
    if (gathered < 0)
        return gathered;
    if ((uint64_t)gathered > UINT32_MAX - ESC_MESSAGE_HEAD_BYTES)
        return ESC_ENTRY_NO_ROOM;
    esc_append_head_store(body, head, (uint32_t)(hi - lo + 1));
    esc_frame_store_head(out, body, (uint32_t)(ESC_MESSAGE_HEAD_BYTES + gathered));
    return (int64_t)ESC_FRAME_HEAD_BYTES + ESC_MESSAGE_HEAD_BYTES + gathered;
}

int esc_stream_init(esc_stream *stream, int fd, int timeout_ms, size_t local_bytes)
{
    memset(stream, 0, sizeof(*stream));
    stream->local = malloc(local_bytes);
    if (stream->local == NULL)
        return -1;
    stream->local_bytes = local_bytes;
    stream->fd = fd;
    stream->timeout_ms = timeout_ms;
    return 0;
}

void esc_stream_free(esc_stream *stream)
{
    free(stream->local);
    stream->local = NULL;
    stream->local_bytes = 0;
}

void esc_stream_reset(esc_stream *stream, int fd, esc_tls *tls)
{
    stream->fd = fd;
    stream->tls = tls;
    stream->iovcnt = 0;
    stream->local_used = 0;
}

/* Queue bytes at p (local or ring), extending the last iovec when they follow it. */
static void add_iov(esc_stream *stream, uint8_t *p, size_t n)
{
    struct iovec *last = stream->iovcnt ? &stream->iov[stream->iovcnt - 1] : NULL;
    if (n == 0)
        return;
    if (last != NULL && (uint8_t *)last->iov_base + last->iov_len == p) {
        last->iov_len += n;
        return;
    }
    stream->iov[stream->iovcnt].iov_base = p;
    stream->iov[stream->iovcnt].iov_len = n;
    stream->iovcnt++;
}

/* Take a frame that starts at `frame` (local) back off the queue; its head may have been merged
 * into the iovec before it. */
static void unqueue_frame(esc_stream *stream, int iov_mark, const uint8_t *frame)
{
    stream->iovcnt = iov_mark;
    if (iov_mark > 0) {
        struct iovec *before = &stream->iov[iov_mark - 1];
        const uint8_t *start = before->iov_base;
        if (start < frame && start + before->iov_len > frame)
            before->iov_len = (size_t)(frame - start);
    }
}

static int send_queued(esc_stream *stream, int flags)
{
    size_t total = 0;
    int i, rc;
    if (stream->iovcnt == 0)
        return 0;
    for (i = 0; i < stream->iovcnt; i++)
        total += stream->iov[i].iov_len;
    if (stream->tls != NULL)
        rc = esc_tls_write_all(stream->tls, stream->iov, stream->iovcnt, stream->timeout_ms);
    else
        rc = esc_send_all(stream->fd, stream->iov, stream->iovcnt, stream->timeout_ms, flags);
    stream->iovcnt = 0;
    stream->local_used = 0;
    stream->sends++;
    if (rc < 0) {
        stream->error = -rc;
        return ESC_STREAM_SEND_FAILED;
    }
    stream->bytes_sent += total;
    return 0;
}

int esc_stream_flush(esc_stream *stream)
{
    return send_queued(stream, 0);
}

int esc_stream_queue_frame(esc_stream *stream, const uint8_t *head, size_t head_n, const uint8_t *body, size_t n)
{
    uint8_t *at;
    if (stream->local_bytes - stream->local_used < head_n + n || stream->iovcnt >= ESC_STREAM_IOV - 2) {
        if (esc_stream_flush(stream) != 0)
            return ESC_STREAM_SEND_FAILED;
    }
    at = stream->local + stream->local_used;
    memcpy(at, head, head_n);
    if (stream->local_bytes - stream->local_used >= head_n + n) {
        memcpy(at + head_n, body, n);
        add_iov(stream, at, head_n + n);
        stream->local_used += head_n + n;
        return 0;
    }
    /* Larger than the whole local buffer (a big snapshot chunk): sent from the caller's bytes
     * now, while they are certainly valid. */
    add_iov(stream, at, head_n);
    add_iov(stream, (uint8_t *)body, n);
    return esc_stream_flush(stream);
}

int esc_stream_queue_message(esc_stream *stream, const uint8_t *body, size_t n)
{
    uint8_t head[ESC_FRAME_HEAD_BYTES];
    if (n > UINT32_MAX) {
        stream->error = EMSGSIZE;
        return ESC_STREAM_SEND_FAILED;
    }
    esc_frame_store_head(head, body, (uint32_t)n);
    return esc_stream_queue_frame(stream, head, ESC_FRAME_HEAD_BYTES, body, n);
}

int64_t esc_stream_queue_append(esc_stream *stream, const esc_entry_ring *ring, const esc_append_head *head,
                                uint64_t pos, uint64_t lo, uint64_t hi)
{
    esc_entry_cursor cursor;
    uint64_t count, index, data_bytes = 0, body_bytes;
    size_t head_bytes;
    int iov_mark, first_payload, rc, i;
    uint8_t *frame, *table, held;
    uint32_t crc;
    struct iovec *last;
    if (hi < lo)
        return ESC_ENTRY_MISMATCH;
    count = hi - lo + 1;
    /* Each entry may take an iovec, plus the head and the byte held back. */
    head_bytes = ESC_FRAME_HEAD_BYTES + ESC_MESSAGE_HEAD_BYTES + ESC_MESSAGE_ENTRY_ROW_BYTES * count;
    if (count > ESC_STREAM_IOV - 3 || head_bytes + 1 > stream->local_bytes)
        return ESC_ENTRY_NO_ROOM;
    if (stream->local_bytes - stream->local_used < head_bytes + 1 || ESC_STREAM_IOV - stream->iovcnt < (int)count + 2) {
        if (esc_stream_flush(stream) != 0)
            return ESC_STREAM_SEND_FAILED;
    }
    iov_mark = stream->iovcnt;
    frame = stream->local + stream->local_used;
    table = frame + ESC_FRAME_HEAD_BYTES + ESC_MESSAGE_HEAD_BYTES;
    add_iov(stream, frame, head_bytes);
    first_payload = stream->iovcnt;
    rc = esc_entry_cursor_begin(ring, &cursor, pos);
    for (index = lo; rc == ESC_ENTRY_OK && index <= hi; index++) {
        uint64_t term;
        uint32_t length;
        const uint8_t *payload;
        rc = esc_entry_cursor_next(ring, &cursor, pos, index, &term, &payload, &length);
        if (rc != ESC_ENTRY_OK)
            break;
        esc_store_u64(table + (index - lo) * ESC_MESSAGE_ENTRY_ROW_BYTES, term);
        esc_store_u32(table + (index - lo) * ESC_MESSAGE_ENTRY_ROW_BYTES + 8, length);
        add_iov(stream, (uint8_t *)payload, length);
        data_bytes += length;
    }
    body_bytes = ESC_MESSAGE_HEAD_BYTES + ESC_MESSAGE_ENTRY_ROW_BYTES * count + data_bytes;
    if (rc == ESC_ENTRY_OK && body_bytes > UINT32_MAX)
        rc = ESC_ENTRY_NO_ROOM;
    if (rc != ESC_ENTRY_OK) {
        unqueue_frame(stream, iov_mark, frame);
        return rc;
    }
    esc_append_head_store(frame + ESC_FRAME_HEAD_BYTES, head, (uint32_t)count);
    crc = esc_crc32c(0, frame + ESC_FRAME_HEAD_BYTES, head_bytes - ESC_FRAME_HEAD_BYTES);
    for (i = first_payload; i < stream->iovcnt; i++)
        crc = esc_crc32c(crc, stream->iov[i].iov_base, stream->iov[i].iov_len);
    esc_frame_store_head_crc(frame, (uint32_t)body_bytes, crc);
    /* Hold back the frame's last byte (the head is never empty, so there is one). The first
     * iovec of this frame may have been merged into bytes queued before it; only its end is
     * this frame's, and the last byte is always this frame's. */
    last = &stream->iov[stream->iovcnt - 1];
    held = ((uint8_t *)last->iov_base)[last->iov_len - 1];
    if (--last->iov_len == 0)
        stream->iovcnt--;
    /* Check 1: the bytes the CRC covered were all still the published ones. */
    if (esc_entry_ring_check(ring, pos) != ESC_ENTRY_OK) {
        unqueue_frame(stream, iov_mark, frame);
        return ESC_ENTRY_STALE;
    }
    stream->local_used += head_bytes;
    if (send_queued(stream, MSG_MORE) != 0)
        return ESC_STREAM_SEND_FAILED;
    /* Check 2: no byte the kernel copied came from a later write (append_stream.h). */
    if (esc_entry_ring_check(ring, pos) != ESC_ENTRY_OK)
        return ESC_STREAM_LAPPED;
    stream->local[0] = held;
    stream->local_used = 1;
    add_iov(stream, stream->local, 1);
    return (int64_t)(ESC_FRAME_HEAD_BYTES + body_bytes);
}
