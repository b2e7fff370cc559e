/*
 * A replication worker's whole cycle, in C without the GIL (eventstream/replication/worker.py
 * keeps dialling, the 0.2 s totals report and error messages):
 *
 *   poll the doorbell and the follower's link -> read the follower's answers, check their frames
 *   (length limit, CRC-32C), decode them, keep the replication answers from this follower to
 *   this node, and relay each as a RESPONSE status record -> take the node's orders from the
 *   control ring, merge APPEND orders that continue each other, send them (append_stream.h)
 *   -> report overwritten orders (STALE), dropped ones (UNREACHABLE) and the link (CONNECTED)
 *   -> sleep on the doorbell when there is nothing to do (the eventcount of spsc_ring.h).
 *
 * The answer decoding accepts exactly what eventstream/transport/peer_codec.py's decode_message
 * accepts (a differential test holds the two together) and relays the same fields as the Python
 * worker's RESPONSE_LAYOUT; the order layout is worker.py's APPEND_ORDER. All limits are fixed
 * at init: the receive buffer holds one largest answer frame plus one read; pending answers,
 * pending stale reports and the entries of one merged AppendEntries are bounded.
 *
 * The run returns to Python when a deadline passes (time for the totals report or a redial;
 * met at the next pass, so an idle worker with a link up may report up to poll_ms late), after
 * an idle sleep (Python checks its parent is alive), when the link is lost (the caller closes
 * its socket; lost_reason says why), or on a corrupt control ring.
 */
#ifndef ESC_WORKER_CYCLE_H
#define ESC_WORKER_CYCLE_H

#include <stddef.h>
#include <stdint.h>

#include "append_stream.h"
#include "entry_ring.h"
#include "spsc_ring.h"

#define ESC_ORDER_MESSAGE 1u
#define ESC_ORDER_APPEND 2u
#define ESC_ORDER_APPEND_BYTES 80u
#define ESC_STATUS_CONNECTED 1u
#define ESC_STATUS_UNREACHABLE 2u
#define ESC_STATUS_RESPONSE 4u
#define ESC_STATUS_STALE 5u
#define ESC_RESPONSE_BYTES 56u
#define ESC_WAIT_BOUNDS_MAX 16
#define ESC_PENDING_RESPONSES_MAX 4096
#define ESC_PENDING_STALE_MAX 1024
#define ESC_RECV_BYTES 65536u
/* Bytes of frames one pass over the orders sends before the answers are read again. */
#define ESC_CYCLE_SEND_BYTES (4u << 20)

/* esc_worker_run results. */
#define ESC_RUN_DEADLINE 0
#define ESC_RUN_IDLE 1
#define ESC_RUN_LOST 2
#define ESC_RUN_RING_CORRUPT 3
#define ESC_RUN_ORPHANED 4 /* the node's end of the doorbell is closed: it stopped or died */

/* Why the link was lost (lost_reason); lost_errno / lost_a / lost_b give the detail. */
#define ESC_LOST_RECV_FAILED 1    /* errno */
#define ESC_LOST_CLOSED 2
#define ESC_LOST_FRAME_TOO_LONG 3 /* a: the length prefix */
#define ESC_LOST_FRAME_CRC 4      /* a: the header's CRC, b: the body's */
#define ESC_LOST_SEND_FAILED 5    /* errno */
#define ESC_LOST_LAPPED 6         /* a: the first index of the frame left unfinished */

/* decode results (esc_worker_decode_answer). */
#define ESC_ANSWER_OK 0
#define ESC_ANSWER_MALFORMED 1
#define ESC_ANSWER_UNEXPECTED 2

typedef struct {
    uint64_t term, prev_index, prev_term, commit, lo, hi, pos, end, data_bytes, published_ns;
} esc_append_order;

typedef struct {
    uint64_t node_id, peer_id;
    uint64_t append_bytes_max;   /* entry bytes one merged AppendEntries may carry */
    uint64_t append_entries_max; /* entries one merged AppendEntries may carry */
    uint64_t answer_frame_max;   /* the largest answer frame accepted from the follower */
    int doorbell_fd;             /* read end: the node rings it after writing orders */
    int node_bell_fd;            /* write end: rung after writing status records the node sleeps on */
    int send_timeout_ms, poll_ms, status_retry_ms;
    int n_wait_bounds;           /* upper bounds of the order-wait histogram, ascending */
    uint64_t wait_bounds_ns[ESC_WAIT_BOUNDS_MAX];
} esc_worker_config;

typedef struct {
    esc_worker_config cfg; /* fixed at init */
    const esc_entry_ring *entries;
    esc_ring *control;
    esc_ring *status;
    esc_stream stream;
    int fd;       /* the follower link, -1 when down */
    esc_tls *tls; /* over TLS: the link's session (the worker's: freed when the link goes) */

    uint8_t *rx; /* received bytes not yet split into frames */
    size_t rx_used, rx_cap;
    uint8_t (*pending)[ESC_RESPONSE_BYTES]; /* answers waiting for room in the status ring */
    int pending_n;
    uint64_t stale_lo[ESC_PENDING_STALE_MAX];
    int stale_n;
    uint64_t dropped_unreported;
    int connected_unreported;

    /* Totals since start (the STATS report). */
    uint64_t messages, dropped, stale, sleeps, doorbell_wakes, missed_wakeups, order_wait_ns;
    uint64_t wait_buckets[ESC_WAIT_BOUNDS_MAX + 1];
    uint64_t malformed_answers, unexpected_answers, unknown_orders, answers_relayed;

    int lost_reason, lost_errno;
    uint64_t lost_a, lost_b;
} esc_worker;

/* 0, or -1 when out of memory or the configuration is out of range. */
int esc_worker_init(esc_worker *w, const esc_worker_config *cfg, const esc_entry_ring *entries, esc_ring *control,
                    esc_ring *status);
void esc_worker_free(esc_worker *w);

/* The link is up on fd (CONNECTED is reported), or down (fd -1: orders are dropped and counted).
 * tls: the session over fd, handshake done (the worker owns it from here), or NULL. */
void esc_worker_link(esc_worker *w, int fd, esc_tls *tls);

/* Cycle until something needs the caller (see above); deadline on CLOCK_MONOTONIC. */
int esc_worker_run(esc_worker *w, uint64_t deadline_ns);

/* Decode one answer frame body into a RESPONSE record (rec, ESC_RESPONSE_BYTES). */
int esc_worker_decode_answer(const esc_worker *w, const uint8_t *body, size_t n, uint8_t *rec);

/* Append received bytes (as a recv would) and take every complete frame's answer into pending.
 * 0; -1 when a frame is bad (lost_reason says how; the link is dropped); -2 when n is more than
 * ESC_RECV_BYTES or can_read is false (nothing taken). */
int esc_worker_feed(esc_worker *w, const uint8_t *data, size_t n);

/* Whether pending has room for every answer one read of the link may complete. */
int esc_worker_can_read(const esc_worker *w);

/* Write what is pending to the status ring (answers, stale orders, CONNECTED, UNREACHABLE) as
 * far as it has room, and ring the node's bell when it sleeps. */
void esc_worker_flush_status(esc_worker *w);

#endif /* ESC_WORKER_CYCLE_H */
