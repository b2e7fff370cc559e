/*
 * A replication worker's outgoing byte stream to its follower: frames are queued as a gather
 * list and handed to the kernel with sendmsg, and an AppendEntries' entry payloads are not
 * copied into a send buffer first: their iovecs point into the shared entry ring
 * (entry_ring.h). Frame heads, entry tables and full messages live in a small local buffer.
 *
 * Why that is safe although the ring's producer may overwrite those bytes at any moment (it
 * never waits for a reader, entry_ring.h):
 *
 * 1. The CRC-32C in the frame header is computed over the ring bytes before the send, and a
 *    seqlock check (esc_entry_ring_check: acquire fence, low <= pos) follows it: a frame whose
 *    bytes were already given up is never sent (STALE; the stream and the link stay usable).
 * 2. The kernel copies the bytes during sendmsg (TCP and Unix stream sockets copy the user
 *    pages into socket buffers before the call returns; MSG_ZEROCOPY is never used). The
 *    producer may lap the records while it does, so the bytes on the wire may differ from the
 *    bytes the CRC was computed over. The CRC would catch nearly all such tears, but "nearly"
 *    is not enough: a torn frame must never be complete on the follower's side. So every
 *    ring-backed frame is sent WITHOUT ITS LAST BYTE (with MSG_MORE, so TCP holds the partial
 *    segment instead of pushing it), then the seqlock check runs again. Any byte the kernel
 *    copied from a later write implies the producer's release-ordered store of `low` before
 *    that write, which the check's acquire fence makes visible: low > pos (the argument of
 *    entry_ring.h, with the kernel's copy as one more read in this thread's program order).
 *      - check passes: every byte sent is the byte the CRC covered; the held-back last byte
 *        (copied out before the check) leads the next sendmsg and completes the frame.
 *      - check fails (LAPPED): the last byte is never sent. The follower holds a frame that can
 *        never complete; the caller must close the link (the follower then drops the partial
 *        frame with the connection) and the order is reported stale. Nothing else can be
 *        written on that stream, since the follower would read it as the frame's missing tail.
 * 3. A send that fails part way (timeout, peer gone) likewise leaves at most an incomplete
 *    frame behind; the caller closes the link.
 * Full messages (heartbeats, snapshot chunks) are copied into the local buffer, or sent from
 * the caller's buffer during the call, so they need no check.
 *
 * Cost: one sendmsg per ring-backed frame, plus one to finish the last; the frames' entry bytes
 * are read twice (CRC, then the kernel's copy) instead of three times (copy, CRC, kernel).
 *
 * Over TLS (tls set, tls_link.h) the gather list goes to esc_tls_write_all instead of sendmsg:
 * OpenSSL reads the ring bytes while it encrypts them, during the call, as the kernel does
 * during sendmsg, so the argument above holds word for word with "the encryption's read" for
 * "the kernel's copy": a lapped frame is still never completed on the wire.
 */
#ifndef ESC_APPEND_STREAM_H
#define ESC_APPEND_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "entry_ring.h"
#include "frame_format.h"
#include "peer_message.h"
#include "tls_link.h"

#define ESC_STREAM_IOV 1024
/* queue_append results besides a frame length and ESC_ENTRY_STALE / MISMATCH / NO_ROOM. */
#define ESC_STREAM_LAPPED (-8)
#define ESC_STREAM_SEND_FAILED (-9)

typedef struct {
    uint64_t to, sender, term, prev_index, prev_term, commit;
} esc_append_head;

typedef struct {
    int fd;
    esc_tls *tls;         /* NULL: plain TCP (the stream does not own it) */
    int timeout_ms;
    int error;            /* errno of the last failed send */
    int iovcnt;           /* queued, not yet handed to the kernel */
    uint8_t *local;       /* frame heads, entry tables, full messages, the held-back byte */
    size_t local_bytes;
    size_t local_used;
    uint64_t bytes_sent;  /* handed to the kernel */
    uint64_t sends;       /* sendmsg batches (esc_send_all calls) */
    struct iovec iov[ESC_STREAM_IOV];
} esc_stream;

/* Write the fixed head of an AppendEntries peer message carrying `count` entries at body. */
void esc_append_head_store(uint8_t *body, const esc_append_head *head, uint32_t count);

/* Copy one AppendEntries frame (frame head, message head, entries lo..hi read from pos on) into
 * out. The frame's length, or ESC_ENTRY_STALE / ESC_ENTRY_MISMATCH (nothing in out is
 * meaningful) or ESC_ENTRY_NO_ROOM (out is too small). */
int64_t esc_append_frame_encode(const esc_entry_ring *ring, const esc_append_head *head, uint64_t pos, uint64_t lo,
                                uint64_t hi, uint8_t *out, size_t room);

/* local_bytes of local buffer (at least 4 KiB). 0, or -1 when out of memory. */
int esc_stream_init(esc_stream *stream, int fd, int timeout_ms, size_t local_bytes);
void esc_stream_free(esc_stream *stream);
/* Forget whatever is queued (after a lost link) and write to fd (through tls when not NULL)
 * from now on. */
void esc_stream_reset(esc_stream *stream, int fd, esc_tls *tls);

/* Queue head_n bytes of head (at most ESC_FRAME_HEAD_BYTES; 0 for a frame already complete in body),
 * then n bytes of body: copied, or sent from body before returning when they do not fit the
 * local buffer. 0 or ESC_STREAM_SEND_FAILED. */
int esc_stream_queue_frame(esc_stream *stream, const uint8_t *head, size_t head_n, const uint8_t *body, size_t n);

/* Queue one full message (body of n bytes) as a frame. 0, or ESC_STREAM_SEND_FAILED when a send
 * it needed failed (error holds the errno; close the link). */
int esc_stream_queue_message(esc_stream *stream, const uint8_t *body, size_t n);

/* Send entries lo..hi of the ring, the record at pos on, as one AppendEntries frame, all but
 * its last byte (see above). Returns the frame's length, or ESC_ENTRY_STALE / ESC_ENTRY_MISMATCH
 * (nothing was sent or queued), ESC_ENTRY_NO_ROOM (more entries than one gather list or the
 * local buffer takes: nothing was sent; copy the frame out with esc_entry_ring_gather instead),
 * ESC_STREAM_LAPPED or ESC_STREAM_SEND_FAILED (close the link). */
int64_t esc_stream_queue_append(esc_stream *stream, const esc_entry_ring *ring, const esc_append_head *head,
                                uint64_t pos, uint64_t lo, uint64_t hi);

/* Send everything queued and push it. 0 or ESC_STREAM_SEND_FAILED. */
int esc_stream_flush(esc_stream *stream);

#endif /* ESC_APPEND_STREAM_H */
