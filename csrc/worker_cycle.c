/* A replication worker's cycle; what it does and why is in worker_cycle.h. */
#include "worker_cycle.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "byte_order.h"
#include "frame_format.h"
#include "peer_message.h"

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int esc_worker_init(esc_worker *w, const esc_worker_config *cfg, const esc_entry_ring *entries, esc_ring *control,
                    esc_ring *status)
{
    memset(w, 0, sizeof(*w));
    if (cfg->n_wait_bounds < 0 || cfg->n_wait_bounds > ESC_WAIT_BOUNDS_MAX)
        return -1;
    w->cfg = *cfg;
    w->entries = entries;
    w->control = control;
    w->status = status;
    w->fd = -1;
    w->rx_cap = ESC_FRAME_HEAD_BYTES + cfg->answer_frame_max + ESC_RECV_BYTES;
    w->rx = malloc(w->rx_cap);
    w->pending = malloc(sizeof(*w->pending) * ESC_PENDING_RESPONSES_MAX);
    if (w->rx == NULL || w->pending == NULL || esc_stream_init(&w->stream, -1, cfg->send_timeout_ms, 1u << 18) != 0) {
        esc_worker_free(w);
        return -1;
    }
    return 0;
}

void esc_worker_free(esc_worker *w)
{
    free(w->rx);
    free(w->pending);
    w->rx = NULL;
    w->pending = NULL;
    esc_stream_free(&w->stream);
    esc_tls_free(w->tls);
    w->tls = NULL;
}

void esc_worker_link(esc_worker *w, int fd, esc_tls *tls)
{
    if (w->tls != tls)
        esc_tls_free(w->tls);
    w->fd = fd;
    w->tls = tls;
    w->rx_used = 0;
    esc_stream_reset(&w->stream, fd, tls);
    if (fd >= 0)
        w->connected_unreported = 1;
}

static int lose(esc_worker *w, int reason, int err, uint64_t a, uint64_t b)
{
    w->lost_reason = reason;
    w->lost_errno = err;
    w->lost_a = a;
    w->lost_b = b;
    esc_worker_link(w, -1, NULL);
    return ESC_RUN_LOST;
}

/* -- answers ------------------------------------------------------------------------------ */

int esc_worker_decode_answer(const esc_worker *w, const uint8_t *body, size_t n, uint8_t *rec)
{
    uint64_t n_voters, n_entries, context_len, data_len, fixed_end, pos, k;
    uint8_t type;
    /* The structure checks of decode_message, in its order; any failure is a malformed answer. */
    if (n < ESC_MESSAGE_HEAD_BYTES || body[ESC_MESSAGE_AT_VERSION] != ESC_MESSAGE_VERSION ||
        body[ESC_MESSAGE_AT_TYPE] < 1 || body[ESC_MESSAGE_AT_TYPE] > ESC_MESSAGE_TYPE_MAX)
        return ESC_ANSWER_MALFORMED;
    type = body[ESC_MESSAGE_AT_TYPE];
    n_voters = body[ESC_MESSAGE_AT_VOTERS];
    n_entries = esc_load_u32(body + ESC_MESSAGE_AT_ENTRIES);
    context_len = esc_load_u32(body + ESC_MESSAGE_AT_CONTEXT_LEN);
    data_len = esc_load_u32(body + ESC_MESSAGE_AT_DATA_LEN);
    if (n_entries > ESC_MESSAGE_ENTRIES_MAX)
        return ESC_ANSWER_MALFORMED;
    fixed_end = ESC_MESSAGE_HEAD_BYTES + 8 * n_voters + ESC_MESSAGE_ENTRY_ROW_BYTES * n_entries;
    if (fixed_end + context_len + data_len > n)
        return ESC_ANSWER_MALFORMED;
    if ((uint64_t)(body[ESC_MESSAGE_AT_FLAGS] >> ESC_MESSAGE_LEARNERS_SHIFT) > n_voters)
        return ESC_ANSWER_MALFORMED;
    pos = fixed_end + context_len + data_len;
    for (k = 0; k < n_entries; k++) {
        pos += esc_load_u32(body + ESC_MESSAGE_HEAD_BYTES + 8 * n_voters + ESC_MESSAGE_ENTRY_ROW_BYTES * k + 8);
        if (pos > n)
            return ESC_ANSWER_MALFORMED;
    }
    if (pos != n)
        return ESC_ANSWER_MALFORMED;
    if ((type != ESC_MESSAGE_APPEND_RESPONSE && type != ESC_MESSAGE_HEARTBEAT_RESPONSE &&
         type != ESC_MESSAGE_SNAPSHOT_RESPONSE) ||
        esc_load_u64(body + ESC_MESSAGE_AT_SENDER) != w->cfg.peer_id ||
        esc_load_u64(body + ESC_MESSAGE_AT_TO) != w->cfg.node_id)
        return ESC_ANSWER_UNEXPECTED;
    /* RESPONSE_LAYOUT "<BB6xQQQQQQ": type, reject, then term, index, log_term, hint_index,
     * read_seq, offset. */
    memset(rec, 0, ESC_RESPONSE_BYTES);
    rec[0] = type;
    rec[1] = (body[ESC_MESSAGE_AT_FLAGS] & ESC_MESSAGE_FLAG_REJECT) ? 1 : 0;
    memcpy(rec + 8, body + ESC_MESSAGE_AT_TERM, 8);
    memcpy(rec + 16, body + ESC_MESSAGE_AT_INDEX, 8);
    memcpy(rec + 24, body + ESC_MESSAGE_AT_LOG_TERM, 8);
    memcpy(rec + 32, body + ESC_MESSAGE_AT_HINT_INDEX, 24); /* hint_index, read_seq, offset */
    return ESC_ANSWER_OK;
}

static void take_answer(esc_worker *w, const uint8_t *body, size_t n)
{
    uint8_t rec[ESC_RESPONSE_BYTES];
    int rc = esc_worker_decode_answer(w, body, n, rec);
    if (rc == ESC_ANSWER_MALFORMED) {
        w->malformed_answers++;
        return;
    }
    if (rc == ESC_ANSWER_UNEXPECTED) {
        w->unexpected_answers++;
        return;
    }
    if (w->pending_n > 0 && rec[0] == ESC_MESSAGE_APPEND_RESPONSE && !rec[1]) {
        /* A success supersedes the success just before it at the same term: the core only needs
         * the highest index matched (its window frees through it). */
        uint8_t *last = w->pending[w->pending_n - 1];
        if (last[0] == ESC_MESSAGE_APPEND_RESPONSE && !last[1] && esc_load_u64(last + 8) == esc_load_u64(rec + 8) &&
            esc_load_u64(last + 16) <= esc_load_u64(rec + 16)) {
            memcpy(last, rec, ESC_RESPONSE_BYTES);
            return;
        }
    }
    /* Always true: the link is read only with room for a whole read's answers (can_read). */
    if (w->pending_n < ESC_PENDING_RESPONSES_MAX)
        memcpy(w->pending[w->pending_n++], rec, ESC_RESPONSE_BYTES);
}

/* Take every complete frame in rx; keep the incomplete tail. 0, or -1 after a bad frame. */
static int split_frames(esc_worker *w)
{
    size_t pos = 0;
    esc_frame f;
    for (;;) {
        int state = esc_frame_next(w->rx + pos, w->rx_used - pos, w->cfg.answer_frame_max, &f);
        if (state == ESC_FRAME_NEED_MORE)
            break;
        if (state == ESC_FRAME_TOO_LONG) {
            lose(w, ESC_LOST_FRAME_TOO_LONG, 0, f.body_len, 0);
            return -1;
        }
        if (state == ESC_FRAME_BAD_CRC) {
            lose(w, ESC_LOST_FRAME_CRC, 0, f.head_crc, f.body_crc);
            return -1;
        }
        take_answer(w, w->rx + pos + ESC_FRAME_HEAD_BYTES, f.body_len);
        pos += ESC_FRAME_HEAD_BYTES + f.body_len;
    }
    if (pos) {
        memmove(w->rx, w->rx + pos, w->rx_used - pos);
        w->rx_used -= pos;
    }
    return 0;
}

int esc_worker_feed(esc_worker *w, const uint8_t *data, size_t n)
{
    if (n > ESC_RECV_BYTES || !esc_worker_can_read(w))
        return -2;
    memcpy(w->rx + w->rx_used, data, n);
    w->rx_used += n;
    return split_frames(w);
}

int esc_worker_can_read(const esc_worker *w)
{
    /* One read completes at most one frame begun before it plus one per smallest answer frame
     * in it: read only with room for all of them, so no answer is ever dropped. */
    return w->pending_n + 1 + (int)(ESC_RECV_BYTES / (ESC_FRAME_HEAD_BYTES + ESC_MESSAGE_HEAD_BYTES)) <= ESC_PENDING_RESPONSES_MAX;
}

/* Read what the follower sent (poll said there is some). */
static int read_answers(esc_worker *w)
{
    /* Invariant: rx_used < ESC_FRAME_HEAD_BYTES + answer_frame_max (split_frames takes every complete
     * frame), so one read always fits in rx. */
    ssize_t got;
    if (w->tls != NULL) {
        int events;
        got = esc_tls_read(w->tls, w->rx + w->rx_used, ESC_RECV_BYTES, &events);
        if (got == -1)
            return ESC_RUN_DEADLINE; /* nothing decrypted yet: wait for the socket again */
        if (got == -2)
            return lose(w, ESC_LOST_RECV_FAILED, EPROTO, 0, 0);
    } else {
        got = recv(w->fd, w->rx + w->rx_used, ESC_RECV_BYTES, MSG_DONTWAIT);
    }
    if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return ESC_RUN_DEADLINE;
        return lose(w, ESC_LOST_RECV_FAILED, errno, 0, 0);
    }
    if (got == 0)
        return lose(w, ESC_LOST_CLOSED, 0, 0, 0);
    w->rx_used += (size_t)got;
    if (split_frames(w) != 0)
        return ESC_RUN_LOST;
    esc_worker_flush_status(w);
    return ESC_RUN_DEADLINE;
}

/* -- reports ------------------------------------------------------------------------------ */

static int write_status(esc_worker *w, uint32_t kind, const void *payload, size_t n)
{
    uint8_t *out;
    if (esc_ring_reserve(w->status, kind, n, &out) != ESC_RING_OK)
        return 0;
    memcpy(out, payload, n);
    esc_ring_publish(w->status);
    return 1;
}

void esc_worker_flush_status(esc_worker *w)
{
    int wrote = 0, sent = 0, taken = 0;
    uint8_t count[8];
    if (w->connected_unreported && write_status(w, ESC_STATUS_CONNECTED, NULL, 0)) {
        w->connected_unreported = 0;
        wrote = 1;
    }
    if (w->dropped_unreported) {
        esc_store_u64(count, w->dropped_unreported);
        if (write_status(w, ESC_STATUS_UNREACHABLE, count, 8)) {
            w->dropped_unreported = 0;
            wrote = 1;
        }
    }
    while (taken < w->stale_n) {
        esc_store_u64(count, w->stale_lo[taken]);
        if (!write_status(w, ESC_STATUS_STALE, count, 8))
            break;
        taken++;
    }
    if (taken) {
        memmove(w->stale_lo, w->stale_lo + taken, sizeof(uint64_t) * (size_t)(w->stale_n - taken));
        w->stale_n -= taken;
        wrote = 1;
    }
    while (sent < w->pending_n && write_status(w, ESC_STATUS_RESPONSE, w->pending[sent], ESC_RESPONSE_BYTES))
        sent++;
    if (sent) {
        memmove(w->pending, w->pending + sent, ESC_RESPONSE_BYTES * (size_t)(w->pending_n - sent));
        w->pending_n -= sent;
        w->answers_relayed += (uint64_t)sent;
        wrote = 1;
    }
    if (wrote && esc_ring_wake_needed(w->status)) {
        /* A full pipe already holds a wake-up; a closed one means the pool is stopping us. */
        ssize_t ignored = write(w->cfg.node_bell_fd, "\x01", 1);
        (void)ignored;
    }
}

/* -- orders ------------------------------------------------------------------------------- */

static void parse_order(const uint8_t *p, esc_append_order *o)
{
    o->term = esc_load_u64(p);
    o->prev_index = esc_load_u64(p + 8);
    o->prev_term = esc_load_u64(p + 16);
    o->commit = esc_load_u64(p + 24);
    o->lo = esc_load_u64(p + 32);
    o->hi = esc_load_u64(p + 40);
    o->pos = esc_load_u64(p + 48);
    o->end = esc_load_u64(p + 56);
    o->data_bytes = esc_load_u64(p + 64);
    o->published_ns = esc_load_u64(p + 72);
}

static void observe_order_wait(esc_worker *w, uint64_t now_ns, uint64_t published_ns)
{
    /* Both ends read CLOCK_MONOTONIC, one clock for the whole machine. */
    uint64_t wait = now_ns > published_ns ? now_ns - published_ns : 0;
    int i = 0;
    while (i < w->cfg.n_wait_bounds && w->cfg.wait_bounds_ns[i] < wait)
        i++;
    w->order_wait_ns += wait;
    w->wait_buckets[i]++;
}

/* Whether order o continues the AppendEntries being assembled in a (then merged into it). */
static int maybe_extend(const esc_worker *w, esc_append_order *a, const esc_append_order *o)
{
    uint64_t capacity = w->entries->capacity;
    /* The next record follows this one's end, or starts the next lap after a wrap marker. */
    int follows = o->pos == a->end || (o->pos % capacity == 0 && o->pos > a->end && o->pos - a->end < capacity);
    if (o->term != a->term || o->prev_index != a->hi || o->lo != a->hi + 1 || !follows ||
        o->hi - a->lo + 1 > w->cfg.append_entries_max || a->data_bytes + o->data_bytes > w->cfg.append_bytes_max)
        return 0;
    a->hi = o->hi;
    a->commit = o->commit;
    a->end = o->end;
    a->data_bytes += o->data_bytes;
    return 1;
}

/* An order of more entries than one gather list takes (a follower catching up): its frame is
 * copied out of the ring, checked, and sent from the copy. */
static int64_t send_copied(esc_worker *w, const esc_append_head *head, const esc_append_order *a)
{
    uint64_t count = a->hi - a->lo + 1;
    size_t room = ESC_FRAME_HEAD_BYTES + ESC_MESSAGE_HEAD_BYTES + ESC_MESSAGE_ENTRY_ROW_BYTES * count + a->data_bytes;
    uint8_t *out = malloc(room);
    int64_t n;
    if (out == NULL)
        return ESC_ENTRY_NO_ROOM;
    n = esc_append_frame_encode(w->entries, head, a->pos, a->lo, a->hi, out, room);
    if (n > 0 && esc_stream_queue_frame(&w->stream, NULL, 0, out, (size_t)n) != 0)
        n = ESC_STREAM_SEND_FAILED;
    free(out);
    return n;
}

static int discard_orders(esc_worker *w)
{
    uint32_t kind, length;
    const uint8_t *payload;
    int rc;
    while ((rc = esc_ring_peek(w->control, &kind, &payload, &length)) == ESC_RING_OK) {
        esc_ring_consume(w->control);
        w->dropped++;
        w->dropped_unreported++;
    }
    return rc == ESC_RING_CORRUPT ? ESC_RUN_RING_CORRUPT : ESC_RUN_DEADLINE;
}

static int carry_out_orders(esc_worker *w)
{
    uint64_t queued = 0, now = monotonic_ns();
    uint32_t kind, length;
    const uint8_t *payload;
    int rc;
    while (queued < ESC_CYCLE_SEND_BYTES && w->stale_n < ESC_PENDING_STALE_MAX) {
        esc_append_order a, o;
        esc_append_head head;
        int64_t n;
        rc = esc_ring_peek(w->control, &kind, &payload, &length);
        if (rc == ESC_RING_EMPTY)
            break;
        if (rc != ESC_RING_OK)
            return ESC_RUN_RING_CORRUPT;
        if (kind == ESC_ORDER_MESSAGE) {
            rc = esc_stream_queue_message(&w->stream, payload, length);
            esc_ring_consume(w->control);
            if (rc != 0)
                return lose(w, ESC_LOST_SEND_FAILED, w->stream.error, 0, 0);
            queued += ESC_FRAME_HEAD_BYTES + length;
            w->messages++;
            continue;
        }
        if (kind != ESC_ORDER_APPEND || length != ESC_ORDER_APPEND_BYTES) {
            esc_ring_consume(w->control);
            w->unknown_orders++;
            continue;
        }
        parse_order(payload, &a);
        esc_ring_consume(w->control);
        observe_order_wait(w, now, a.published_ns);
        while (esc_ring_peek(w->control, &kind, &payload, &length) == ESC_RING_OK && kind == ESC_ORDER_APPEND &&
               length == ESC_ORDER_APPEND_BYTES) {
            parse_order(payload, &o);
            if (!maybe_extend(w, &a, &o))
                break;
            esc_ring_consume(w->control);
            observe_order_wait(w, now, o.published_ns);
        }
        head.to = w->cfg.peer_id;
        head.sender = w->cfg.node_id;
        head.term = a.term;
        head.prev_index = a.prev_index;
        head.prev_term = a.prev_term;
        head.commit = a.commit;
        n = esc_stream_queue_append(&w->stream, w->entries, &head, a.pos, a.lo, a.hi);
        if (n == ESC_ENTRY_NO_ROOM)
            n = send_copied(w, &head, &a);
        if (n == ESC_STREAM_SEND_FAILED)
            return lose(w, ESC_LOST_SEND_FAILED, w->stream.error, 0, 0);
        if (n < 0) {
            /* Overwritten (or never there, or no memory for a copy): not sent; the node
             * re-probes the follower, which then gets the entries from the log. */
            w->stale++;
            w->stale_lo[w->stale_n++] = a.lo;
            if (n == ESC_STREAM_LAPPED)
                return lose(w, ESC_LOST_LAPPED, 0, a.lo, 0);
            continue;
        }
        queued += (uint64_t)n;
        w->messages++;
    }
    if (esc_stream_flush(&w->stream) != 0)
        return lose(w, ESC_LOST_SEND_FAILED, w->stream.error, 0, 0);
    return ESC_RUN_DEADLINE;
}

/* -- the cycle ---------------------------------------------------------------------------- */

int esc_worker_run(esc_worker *w, uint64_t deadline_ns)
{
    for (;;) {
        struct pollfd fds[2];
        int nfds = 1, timeout = 0, slept = 0, ready, rc, i;
        uint64_t now = monotonic_ns();
        if (now >= deadline_ns)
            return ESC_RUN_DEADLINE;
        esc_worker_flush_status(w);
        if (esc_ring_used(w->control) == 0) {
            if (w->pending_n || w->stale_n) {
                timeout = w->cfg.status_retry_ms;
            } else if (esc_ring_prepare_wait(w->control)) {
                /* A full poll_ms, not cut short by the deadline, while the link is up: a sleep
                 * that ends by its timeout then means nothing came for poll_ms, and one that
                 * finds orders waiting is a missed wake-up (worker.py's WakeCounters). Under
                 * load the loop passes its top often enough to meet the deadline anyway. With
                 * the link down the next dial is due at the deadline. */
                uint64_t left_ms = (deadline_ns - now + 999999u) / 1000000u;
                timeout = w->fd >= 0 || left_ms >= (uint64_t)w->cfg.poll_ms ? w->cfg.poll_ms : (int)left_ms;
                slept = 1;
            }
        }
        fds[0].fd = w->cfg.doorbell_fd;
        fds[0].events = POLLIN;
        if (w->fd >= 0 && esc_worker_can_read(w)) {
            /* While answers wait for room in the status ring, the link is not read (the
             * follower's own send buffer then holds them). */
            fds[1].fd = w->fd;
            fds[1].events = POLLIN;
            nfds = 2;
        }
        for (i = 0; i < nfds; i++)
            fds[i].revents = 0;
        /* Bytes the TLS session decrypted already: the socket will not signal them. */
        if (nfds == 2 && w->tls != NULL && esc_tls_pending(w->tls) > 0) {
            timeout = 0;
            slept = 0;
        }
        ready = poll(fds, (nfds_t)nfds, timeout);
        if (nfds == 2 && w->tls != NULL && esc_tls_pending(w->tls) > 0) {
            fds[1].revents |= POLLIN;
            if (ready <= 0)
                ready = 1;
        }
        if (ready < 0 && errno != EINTR)
            ready = 0;
        if (slept) {
            w->sleeps++;
            if (ready <= 0 && timeout == w->cfg.poll_ms && esc_ring_used(w->control))
                w->missed_wakeups++;
        }
        if (ready <= 0 && timeout > 0)
            return ESC_RUN_IDLE;
        if (ready > 0 && fds[0].revents) {
            char drain[4096];
            if (slept)
                w->doorbell_wakes++;
            /* End of file: no process holds the write end any more, so the node is gone (a
             * SIGKILL gives no chance to stop the workers). Polling on would spin: EOF stays
             * readable. */
            if (read(w->cfg.doorbell_fd, drain, sizeof(drain)) == 0)
                return ESC_RUN_ORPHANED;
        }
        if (ready > 0 && nfds == 2 && fds[1].revents) {
            rc = read_answers(w);
            if (rc != ESC_RUN_DEADLINE)
                return rc;
        }
        rc = w->fd >= 0 ? carry_out_orders(w) : discard_orders(w);
        if (rc != ESC_RUN_DEADLINE)
            return rc;
    }
}
