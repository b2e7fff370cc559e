/*
 * esc-bench's native load engine: one epoll loop over many TCP connections to a cluster's
 * leader, each connection one single-request-at-a-time client (send one APPEND, wait for its
 * answer, send the next). Requests and answers are built and checked here, in C, so the load
 * generator's cost per event is a few system calls and a memcpy rather than the Python client's
 * futures and frames (esc_bench/native_worker.py drives it; docs/benchmarks.md).
 *
 * With a CA set (esc_load_set_tls) each connection is TLS, driven from the same loop: the
 * handshake is one more connection state, reads and writes go through the session. With a
 * token set, each connection sends AUTH right after its hello, ahead of its first request.
 *
 * Wire formats are the node's, byte for byte, from the shared headers: frames in
 * frame_format.h, the hello, requests and answers in client_protocol.h, event batches in
 * batch_codec.h.
 *
 * Nothing here touches Python; esc_load_run() is called without the GIL. Time is CLOCK_MONOTONIC
 * in nanoseconds, the clock behind Python's time.monotonic() on Linux, so the Python side can
 * hand schedule times over as they are.
 */
#ifndef ESC_LOAD_ENGINE_H
#define ESC_LOAD_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "client_protocol.h"
#include "frame_format.h"
#include "tls_link.h"

#define ESC_LOAD_EVENT_ID_BYTES 16
/* Latencies below this many microseconds are counted in an array indexed by the value; slower
 * ones are kept one by one. 131 ms covers every answer of a healthy run. */
#define ESC_LOAD_TALLY_EXACT_US (1u << 17)
#define ESC_LOAD_LATENCY_US_MAX 600000000LL /* esc_bench/latency.py LATENCY_US_HIGHEST */
#define ESC_LOAD_HINT_BYTES_MAX 255
#define ESC_LOAD_SLOTS_MAX 10000

/* What became of one request (or connection attempt). Every value but OK is an error kind;
 * esc_bench/native_worker.py names them in reports. */
enum esc_load_outcome {
    ESC_LOAD_OK = 0,
    ESC_LOAD_NOT_LEADER,     /* status NOT_LEADER; the message is the leader's address if known */
    ESC_LOAD_UNAVAILABLE,    /* status UNAVAILABLE (no quorum, no leader known) */
    ESC_LOAD_OVERLOADED,     /* status OVERLOADED */
    ESC_LOAD_SERVER_TIMEOUT, /* status TIMEOUT */
    ESC_LOAD_REFUSED,        /* any other error status (invalid argument, internal, ...) */
    ESC_LOAD_BAD_FRAME,      /* length prefix above the answer limit, or CRC mismatch */
    ESC_LOAD_BAD_ANSWER,     /* unknown status, wrong request id, wrong result count or size,
                                an answer nobody asked for */
    ESC_LOAD_CLOSED,         /* the node closed or reset the connection */
    ESC_LOAD_CONNECT_FAILED, /* connect() refused or failed */
    ESC_LOAD_NO_ANSWER,      /* no answer (or no connection) within the request timeout */
    ESC_LOAD_OUTCOME_COUNT
};

/* Results of esc_load_run(). */
enum { ESC_LOAD_RUN_UNTIL = 0, ESC_LOAD_RUN_DONE = 1, ESC_LOAD_RUN_LOOKUP = 2,
       ESC_LOAD_RUN_SYSTEM_ERROR = -1 };

typedef struct {
    int outcome;             /* enum esc_load_outcome */
    uint32_t duplicates;     /* OK: events the node answered as duplicates */
    uint64_t leader_id;      /* errors: the node's leader hint, 0 when unknown */
    const uint8_t *message;  /* errors: UTF-8 message inside the body (not terminated) */
    size_t message_len;
} esc_load_answer_t;

/* Bytes of the largest request frame the encoder can write for these parameters. */
size_t esc_load_request_bytes_max(uint32_t batch_size, uint32_t payload_len, uint64_t keys);

/*
 * Writes one whole APPEND request frame at dst (which must hold esc_load_request_bytes_max()
 * bytes) and returns its length. Event i gets ids[16 i .. 16 i + 16) as its id when ids is not
 * NULL, the key "key-<(key_first + i) mod keys>", the payload, and timestamp_us.
 */
size_t esc_load_encode_request(uint8_t *dst, uint64_t request_id, uint32_t batch_size,
                               const uint8_t *ids, uint64_t key_first, uint64_t keys,
                               const uint8_t *payload, uint32_t payload_len, int64_t timestamp_us);

/* Writes the client hello frame (8 + 21 bytes) at dst; returns its length. */
size_t esc_load_encode_hello(uint8_t *dst);


/* Parses an answer body (CRC already checked) to the APPEND request `request_id` of
 * `batch_size` events. Never reads outside body[0, len). Returns answer->outcome. */
int esc_load_parse_answer(const uint8_t *body, size_t len, uint64_t request_id,
                          uint32_t batch_size, esc_load_answer_t *answer);

/* Counts of latencies in microseconds: exact[us] below ESC_LOAD_TALLY_EXACT_US, each slower
 * value in `over`. Invariant: exact[k] == 0 for k outside [lo, hi] (lo > hi when empty). */
typedef struct {
    uint32_t *exact;
    int64_t *over;
    size_t over_len;
    size_t over_cap;
    uint32_t lo;
    uint32_t hi;
    uint64_t clamped; /* slow values that found no memory: counted at the exact range's top */
} esc_load_tally_t;

typedef struct esc_load_engine esc_load_engine_t;

typedef struct {
    uint32_t slots;          /* connections, each one request at a time */
    uint32_t batch_size;     /* events per request */
    const uint8_t *payload;  /* copied */
    uint32_t payload_len;
    uint64_t keys;           /* key cardinality, >= 1 */
    uint64_t key_first;      /* key index of the first event */
    int with_ids;            /* fresh random 16-byte ids per event */
    int64_t timeout_ns;      /* one request's (or connection attempt's) bound */
    int64_t backoff_initial_ns;
    int64_t backoff_max_ns;
} esc_load_config_t;

/* Counters the Python side reads. Plain fields: it reads them only between runs. */
typedef struct {
    uint64_t events;          /* acknowledged events of counted requests */
    uint64_t requests;        /* acknowledged counted requests */
    uint64_t duplicates;      /* events of counted requests answered as duplicates */
    uint64_t events_acked;    /* acknowledged events, warm-up included */
    uint64_t interval_events; /* acknowledged events since the Python side last reset it */
    uint64_t interval_errors;
    uint64_t errors[ESC_LOAD_OUTCOME_COUNT];
    uint64_t connects;        /* connection attempts */
    int64_t last_answer_ns;   /* answer time of the last counted request, 0 before one */
    esc_load_tally_t warmup;  /* latencies of requests sent before the warm-up ended */
    esc_load_tally_t counted; /* latencies of counted requests */
} esc_load_figures_t;

/* NULL when memory or an epoll instance cannot be had (errno says which). */
esc_load_engine_t *esc_load_engine_new(const esc_load_config_t *config);
void esc_load_engine_free(esc_load_engine_t *engine);

/* The leader's address (a numeric IPv4 or IPv6 address) for every later connection attempt;
 * -1 when ip is not one. */
int esc_load_set_target(esc_load_engine_t *engine, const char *ip, uint16_t port);

/* Every later connection over TLS, the node's certificate checked against ca_file
 * (tls_link.h). 0, or -1 with the reason in err. */
int esc_load_set_tls(esc_load_engine_t *engine, const char *ca_file, char *err, size_t err_bytes);
/* Every later connection presents this token with AUTH after its hello (and counts a refusal
 * of it as REFUSED). 0, or -1 when out of memory. */
int esc_load_set_token(esc_load_engine_t *engine, const uint8_t *token, size_t token_len);

/*
 * Requests sent at or after warmup_end_ns are counted; none is sent at or after deadline_ns;
 * at most appends_left counted requests are sent (-1: no bound).
 */
void esc_load_set_schedule(esc_load_engine_t *engine, int64_t warmup_end_ns, int64_t deadline_ns,
                           int64_t appends_left);

/*
 * Drives every connection until `until_ns` (RUN_UNTIL), until every slot is done (RUN_DONE), or
 * until a slot learned that the target is no longer the leader, cannot be reached or does not
 * answer (RUN_LOOKUP: read the hint, set a target, call again). RUN_SYSTEM_ERROR: epoll failed; errno.
 */
int esc_load_run(esc_load_engine_t *engine, int64_t until_ns);

/* The last NOT_LEADER message (the leader's address when the node knew it), and clears the
 * lookup request. Returns its length; *hint is valid until the next run. */
size_t esc_load_take_hint(esc_load_engine_t *engine, const char **hint);

esc_load_figures_t *esc_load_figures(esc_load_engine_t *engine);

/* Why the last TLS handshake failed, "" when none has. */
const char *esc_load_tls_error(const esc_load_engine_t *engine);

/* Empties a tally (after its counts were read). */
void esc_load_tally_clear(esc_load_tally_t *tally);

int64_t esc_load_monotonic_ns(void);

#endif /* ESC_LOAD_ENGINE_H */
