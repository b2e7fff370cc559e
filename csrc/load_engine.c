/* See load_engine.h. */
#define _GNU_SOURCE
#include "load_engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "batch_codec.h"
#include "byte_order.h"
/* An answer is small (21 + 13 bytes per event, or an error message); anything longer than this
 * plus the results is damage, not an answer, and is refused before it is buffered. */
#define ANSWER_SLACK_BYTES (64u * 1024u)
#define RECV_CHUNK_BYTES 4096u
#define IDS_BLOCK_BYTES (64u * 1024u)
#define EPOLL_EVENTS_MAX 64
/* Keys are "key-" and the decimal index; 20 digits hold any u64. */
#define KEY_BYTES_MAX (4 + 20)

enum slot_state { SLOT_DISCONNECTED, SLOT_CONNECTING, SLOT_HANDSHAKING, SLOT_WAITING, SLOT_DONE };

typedef struct {
    int fd;
    esc_tls *tls;     /* over TLS: the connection's session */
    int auth_pending; /* AUTH was sent and its answer has not come yet */
    int state;
    int counted;   /* the request in flight was sent after the warm-up */
    int want_out;  /* EPOLLOUT is registered: a connect or a partial send is pending */
    uint64_t request_id;
    int64_t sent_ns;
    int64_t expires_ns; /* CONNECTING, WAITING: when the attempt counts as NO_ANSWER */
    int64_t retry_ns;   /* DISCONNECTED: when to connect again */
    int64_t backoff_ns;
    uint8_t *out;
    size_t out_len;
    size_t out_sent;
    uint8_t *in;
    size_t in_len;
    size_t in_cap;
} slot_t;

struct esc_load_engine {
    esc_load_config_t config;
    uint8_t *payload;
    int epfd;
    slot_t *slots;
    size_t out_cap;
    size_t answer_body_max;
    struct sockaddr_storage target;
    socklen_t target_len;
    int64_t warmup_end_ns;
    int64_t deadline_ns;
    int64_t appends_left;
    int64_t next_timer_ns; /* no slot timer falls before this */
    uint64_t next_request_id;
    uint64_t key_next;
    uint8_t *ids;
    size_t ids_at;
    size_t ids_len;
    size_t ids_cap;
    int lookup_needed;
    char hint[ESC_LOAD_HINT_BYTES_MAX + 1];
    size_t hint_len;
    char tls_error[ESC_TLS_ERROR_BYTES]; /* why the last handshake failed ("" if none did) */
    esc_tls_ctx *tls_ctx; /* NULL: plain TCP */
    uint8_t *auth;        /* the AUTH request frame, or NULL */
    size_t auth_len;
    esc_load_figures_t figures;
};

int64_t esc_load_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t realtime_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* ---- encoding ------------------------------------------------------------------------------ */

static size_t key_text(uint8_t *dst, uint64_t index)
{
    uint8_t digits[20];
    size_t n = 0;
    do {
        digits[n++] = (uint8_t)('0' + index % 10);
        index /= 10;
    } while (index);
    memcpy(dst, "key-", 4);
    for (size_t i = 0; i < n; i++)
        dst[4 + i] = digits[n - 1 - i];
    return 4 + n;
}

size_t esc_load_request_bytes_max(uint32_t batch_size, uint32_t payload_len, uint64_t keys)
{
    uint8_t scratch[KEY_BYTES_MAX];
    size_t key_max = key_text(scratch, keys ? keys - 1 : 0);
    size_t event = esc_event_encoded_bytes(ESC_LOAD_EVENT_ID_BYTES, key_max, payload_len);
    return ESC_FRAME_HEAD_BYTES + ESC_CLIENT_REQUEST_HEAD_BYTES + ESC_BATCH_HEADER_BYTES +
           (size_t)batch_size * event;
}

size_t esc_load_encode_request(uint8_t *dst, uint64_t request_id, uint32_t batch_size,
                               const uint8_t *ids, uint64_t key_first, uint64_t keys,
                               const uint8_t *payload, uint32_t payload_len, int64_t timestamp_us)
{
    uint8_t *body = dst + ESC_FRAME_HEAD_BYTES;
    uint8_t *batch = body + ESC_CLIENT_REQUEST_HEAD_BYTES;
    uint8_t key[KEY_BYTES_MAX];
    size_t at = ESC_BATCH_HEADER_BYTES;
    uint64_t key_index = key_first % keys;
    esc_event_t ev;
    ev.payload = payload;
    ev.payload_len = payload_len;
    ev.queue = 0;
    ev.timestamp_us = timestamp_us;
    ev.key = key;
    for (uint32_t i = 0; i < batch_size; i++) {
        /* Random ids, as the client library makes up for callers who give none: marked so the
         * cluster keeps them for its generated-id window, as it would the library's. */
        ev.flags = ESC_EVENT_HAS_KEY | (ids ? ESC_EVENT_HAS_ID | ESC_EVENT_ID_GENERATED : 0);
        ev.event_id = ids ? ids + (size_t)i * ESC_LOAD_EVENT_ID_BYTES : NULL;
        ev.id_len = ids ? ESC_LOAD_EVENT_ID_BYTES : 0;
        ev.key_len = (uint32_t)key_text(key, key_index);
        at += esc_batch_write_event(batch + at, &ev);
        if (++key_index == keys)
            key_index = 0;
    }
    esc_batch_write_header(batch, batch_size, (uint32_t)at);
    body[0] = ESC_CLIENT_OP_APPEND;
    esc_store_u64(body + 1, request_id);
    size_t body_len = ESC_CLIENT_REQUEST_HEAD_BYTES + at;
    esc_frame_store_head(dst, body, (uint32_t)body_len);
    return ESC_FRAME_HEAD_BYTES + body_len;
}

size_t esc_load_encode_hello(uint8_t *dst)
{
    uint8_t *body = dst + ESC_FRAME_HEAD_BYTES;
    memcpy(body, ESC_HELLO_MAGIC, ESC_HELLO_MAGIC_BYTES);
    body[ESC_HELLO_MAGIC_BYTES] = ESC_HELLO_ROLE_CLIENT;
    memset(body + ESC_HELLO_MAGIC_BYTES + 1, 0, 16); /* sender and target ids: 0 for clients */
    esc_frame_store_head(dst, body, ESC_HELLO_BYTES);
    return ESC_FRAME_HEAD_BYTES + ESC_HELLO_BYTES;
}

/* ---- answers ------------------------------------------------------------------------------- */

int esc_load_parse_answer(const uint8_t *body, size_t len, uint64_t request_id,
                          uint32_t batch_size, esc_load_answer_t *answer)
{
    memset(answer, 0, sizeof(*answer));
    answer->outcome = ESC_LOAD_BAD_ANSWER;
    if (len < ESC_CLIENT_ANSWER_HEAD_BYTES || esc_load_u64(body + 1) != request_id)
        return answer->outcome;
    uint8_t status = body[0];
    const uint8_t *rest = body + ESC_CLIENT_ANSWER_HEAD_BYTES;
    size_t rest_len = len - ESC_CLIENT_ANSWER_HEAD_BYTES;
    if (status == ESC_CLIENT_STATUS_OK) {
        if (rest_len < ESC_CLIENT_APPEND_OK_FIXED_BYTES)
            return answer->outcome;
        uint32_t n = esc_load_u32(rest + 8);
        /* n is checked against the batch before it sizes anything, so the rows cannot wrap. */
        if (n != batch_size || rest_len != ESC_CLIENT_APPEND_OK_FIXED_BYTES + (size_t)n * ESC_CLIENT_APPEND_OK_ROW_BYTES)
            return answer->outcome;
        /* The duplicate flags follow the queue (u32) and offset (u64) columns. */
        const uint8_t *flags = rest + ESC_CLIENT_APPEND_OK_FIXED_BYTES + (size_t)n * 12;
        uint32_t duplicates = 0;
        for (uint32_t i = 0; i < n; i++)
            duplicates += flags[i] != 0;
        answer->duplicates = duplicates;
        answer->outcome = ESC_LOAD_OK;
        return answer->outcome;
    }
    if (status > ESC_CLIENT_STATUS_LAST || rest_len < ESC_CLIENT_ERROR_FIXED_BYTES)
        return answer->outcome;
    answer->leader_id = esc_load_u64(rest);
    answer->message = rest + ESC_CLIENT_ERROR_FIXED_BYTES;
    answer->message_len = rest_len - ESC_CLIENT_ERROR_FIXED_BYTES;
    switch (status) {
    case ESC_CLIENT_STATUS_NOT_LEADER: answer->outcome = ESC_LOAD_NOT_LEADER; break;
    case ESC_CLIENT_STATUS_UNAVAILABLE: answer->outcome = ESC_LOAD_UNAVAILABLE; break;
    case ESC_CLIENT_STATUS_TIMEOUT: answer->outcome = ESC_LOAD_SERVER_TIMEOUT; break;
    case ESC_CLIENT_STATUS_OVERLOADED: answer->outcome = ESC_LOAD_OVERLOADED; break;
    default: answer->outcome = ESC_LOAD_REFUSED; break;
    }
    return answer->outcome;
}

/* ---- latency tallies ----------------------------------------------------------------------- */

static int tally_init(esc_load_tally_t *t)
{
    memset(t, 0, sizeof(*t));
    t->exact = calloc(ESC_LOAD_TALLY_EXACT_US, sizeof(uint32_t));
    t->lo = ESC_LOAD_TALLY_EXACT_US;
    return t->exact ? 0 : -1;
}

static void tally_free(esc_load_tally_t *t)
{
    free(t->exact);
    free(t->over);
    memset(t, 0, sizeof(*t));
}

static void tally_add(esc_load_tally_t *t, int64_t us)
{
    if (us < 1)
        us = 1;
    if (us > ESC_LOAD_LATENCY_US_MAX)
        us = ESC_LOAD_LATENCY_US_MAX; /* clamped like latency.py: a stall stays in the tail */
    if (us < ESC_LOAD_TALLY_EXACT_US) {
        uint32_t k = (uint32_t)us;
        t->exact[k]++;
        if (k < t->lo)
            t->lo = k;
        if (k > t->hi)
            t->hi = k;
        return;
    }
    if (t->over_len == t->over_cap) {
        size_t cap = t->over_cap ? t->over_cap * 2 : 1024;
        int64_t *grown = realloc(t->over, cap * sizeof(int64_t));
        if (!grown) {
            t->clamped++;
            tally_add(t, ESC_LOAD_TALLY_EXACT_US - 1);
            return;
        }
        t->over = grown;
        t->over_cap = cap;
    }
    t->over[t->over_len++] = us;
}

void esc_load_tally_clear(esc_load_tally_t *t)
{
    if (t->lo <= t->hi)
        memset(t->exact + t->lo, 0, (size_t)(t->hi - t->lo + 1) * sizeof(uint32_t));
    t->lo = ESC_LOAD_TALLY_EXACT_US;
    t->hi = 0;
    t->over_len = 0;
    t->clamped = 0;
}

/* ---- the engine ---------------------------------------------------------------------------- */

esc_load_engine_t *esc_load_engine_new(const esc_load_config_t *config)
{
    if (config->slots == 0 || config->slots > ESC_LOAD_SLOTS_MAX || config->batch_size == 0 ||
        config->batch_size > ESC_BATCH_EVENTS_MAX || config->keys == 0) {
        errno = EINVAL;
        return NULL;
    }
    esc_load_engine_t *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->epfd = -1;
    e->config = *config;
    e->payload = malloc(config->payload_len ? config->payload_len : 1);
    e->slots = calloc(config->slots, sizeof(slot_t));
    e->out_cap = ESC_FRAME_HEAD_BYTES + ESC_HELLO_BYTES +
                 esc_load_request_bytes_max(config->batch_size, config->payload_len, config->keys);
    e->answer_body_max = ESC_CLIENT_ANSWER_HEAD_BYTES + ESC_CLIENT_APPEND_OK_FIXED_BYTES +
                         (size_t)config->batch_size * ESC_CLIENT_APPEND_OK_ROW_BYTES + ANSWER_SLACK_BYTES;
    e->ids_cap = (size_t)config->batch_size * ESC_LOAD_EVENT_ID_BYTES;
    if (e->ids_cap < IDS_BLOCK_BYTES)
        e->ids_cap = IDS_BLOCK_BYTES;
    e->ids = config->with_ids ? malloc(e->ids_cap) : NULL;
    int ok = e->payload && e->slots && (!config->with_ids || e->ids) &&
             tally_init(&e->figures.warmup) == 0 && tally_init(&e->figures.counted) == 0;
    if (ok) {
        if (config->payload_len)
            memcpy(e->payload, config->payload, config->payload_len);
        for (uint32_t i = 0; i < config->slots && ok; i++) {
            slot_t *s = &e->slots[i];
            s->fd = -1;
            s->state = SLOT_DISCONNECTED;
            s->backoff_ns = config->backoff_initial_ns;
            s->out = malloc(e->out_cap);
            s->in_cap = RECV_CHUNK_BYTES * 2;
            s->in = malloc(s->in_cap);
            ok = s->out && s->in;
        }
    }
    if (ok) {
        e->epfd = epoll_create1(EPOLL_CLOEXEC);
        ok = e->epfd >= 0;
    }
    if (!ok) {
        int saved = errno ? errno : ENOMEM;
        esc_load_engine_free(e);
        errno = saved;
        return NULL;
    }
    e->key_next = config->key_first % config->keys;
    e->appends_left = -1;
    e->deadline_ns = INT64_MAX;
    return e;
}

static void slot_close(esc_load_engine_t *e, slot_t *s)
{
    (void)e;
    esc_tls_free(s->tls);
    s->tls = NULL;
    s->auth_pending = 0;
    if (s->fd >= 0)
        close(s->fd); /* also leaves the epoll set: the fd is never duplicated */
    s->fd = -1;
    s->want_out = 0;
    s->out_len = s->out_sent = 0;
    s->in_len = 0;
}

void esc_load_engine_free(esc_load_engine_t *e)
{
    if (!e)
        return;
    if (e->slots) {
        for (uint32_t i = 0; i < e->config.slots; i++) {
            slot_close(e, &e->slots[i]);
            free(e->slots[i].out);
            free(e->slots[i].in);
        }
        free(e->slots);
    }
    if (e->epfd >= 0)
        close(e->epfd);
    tally_free(&e->figures.warmup);
    tally_free(&e->figures.counted);
    esc_tls_ctx_free(e->tls_ctx);
    free(e->auth);
    free(e->ids);
    free(e->payload);
    free(e);
}

int esc_load_set_tls(esc_load_engine_t *e, const char *ca_file, char *err, size_t err_bytes)
{
    esc_tls_ctx *ctx = esc_tls_ctx_new(ca_file, NULL, NULL, err, err_bytes);
    if (ctx == NULL)
        return -1;
    esc_tls_ctx_free(e->tls_ctx);
    e->tls_ctx = ctx;
    return 0;
}

int esc_load_set_token(esc_load_engine_t *e, const uint8_t *token, size_t token_len)
{
    size_t body_len = ESC_CLIENT_REQUEST_HEAD_BYTES + token_len;
    uint8_t *frame = malloc(ESC_FRAME_HEAD_BYTES + body_len);
    if (frame == NULL)
        return -1;
    uint8_t *body = frame + ESC_FRAME_HEAD_BYTES;
    body[0] = ESC_CLIENT_OP_AUTH;
    esc_store_u64(body + 1, 0); /* request id 0: no APPEND uses it */
    memcpy(body + ESC_CLIENT_REQUEST_HEAD_BYTES, token, token_len);
    esc_frame_store_head(frame, body, (uint32_t)body_len);
    /* Each slot's first write carries hello, AUTH and a request: make room for the AUTH. */
    size_t cap = e->out_cap - e->auth_len + ESC_FRAME_HEAD_BYTES + body_len;
    for (uint32_t i = 0; i < e->config.slots; i++) {
        uint8_t *grown = realloc(e->slots[i].out, cap);
        if (grown == NULL) {
            free(frame);
            return -1; /* the slots grown so far only have spare room */
        }
        e->slots[i].out = grown;
    }
    e->out_cap = cap;
    free(e->auth);
    e->auth = frame;
    e->auth_len = ESC_FRAME_HEAD_BYTES + body_len;
    return 0;
}

int esc_load_set_target(esc_load_engine_t *e, const char *ip, uint16_t port)
{
    struct sockaddr_storage addr;
    struct sockaddr_in *v4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&addr;
    socklen_t len;
    memset(&addr, 0, sizeof(addr));
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        len = sizeof(*v4);
    } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        len = sizeof(*v6);
    } else {
        return -1;
    }
    e->target = addr;
    e->target_len = len;
    return 0;
}

void esc_load_set_schedule(esc_load_engine_t *e, int64_t warmup_end_ns, int64_t deadline_ns,
                           int64_t appends_left)
{
    e->warmup_end_ns = warmup_end_ns;
    e->deadline_ns = deadline_ns;
    e->appends_left = appends_left;
}

size_t esc_load_take_hint(esc_load_engine_t *e, const char **hint)
{
    e->hint[e->hint_len] = '\0';
    *hint = e->hint;
    e->lookup_needed = 0;
    return e->hint_len;
}

esc_load_figures_t *esc_load_figures(esc_load_engine_t *e) { return &e->figures; }

const char *esc_load_tls_error(const esc_load_engine_t *e) { return e->tls_error; }

static void note_timer(esc_load_engine_t *e, int64_t at_ns)
{
    if (at_ns < e->next_timer_ns)
        e->next_timer_ns = at_ns;
}

static void slot_done(esc_load_engine_t *e, slot_t *s)
{
    slot_close(e, s);
    s->state = SLOT_DONE;
}

static void slot_fail(esc_load_engine_t *e, slot_t *s, int outcome, int64_t now)
{
    e->figures.errors[outcome]++;
    e->figures.interval_errors++;
    slot_close(e, s);
    s->state = SLOT_DISCONNECTED;
    s->retry_ns = now + s->backoff_ns;
    s->backoff_ns *= 2;
    if (s->backoff_ns > e->config.backoff_max_ns)
        s->backoff_ns = e->config.backoff_max_ns;
    note_timer(e, s->retry_ns);
    /* A refused connection or a silent node may mean the leader is gone or cut off: the
     * Python side asks the cluster who leads now. */
    if (outcome == ESC_LOAD_CONNECT_FAILED || outcome == ESC_LOAD_NO_ANSWER)
        e->lookup_needed = 1;
}

static void set_interest(esc_load_engine_t *e, slot_t *s, int want_out, int64_t now)
{
    if (s->want_out == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = s};
    if (epoll_ctl(e->epfd, EPOLL_CTL_MOD, s->fd, &ev) != 0) {
        slot_fail(e, s, ESC_LOAD_CLOSED, now);
        return;
    }
    s->want_out = want_out;
}

static void slot_flush(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    while (s->out_sent < s->out_len) {
        ssize_t n;
        if (s->tls != NULL) {
            int events = 0;
            n = esc_tls_write(s->tls, s->out + s->out_sent, s->out_len - s->out_sent, &events);
            if (n == 0) {
                /* A write that must first read (TLS) waits on EPOLLIN, which is always watched:
                 * slot_ready then retries it. */
                set_interest(e, s, events == POLLOUT, now);
                return;
            }
            if (n < 0) {
                slot_fail(e, s, ESC_LOAD_CLOSED, now);
                return;
            }
        } else {
            n = send(s->fd, s->out + s->out_sent, s->out_len - s->out_sent, MSG_NOSIGNAL);
        }
        if (n > 0) {
            s->out_sent += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_interest(e, s, 1, now);
            return;
        } else {
            slot_fail(e, s, ESC_LOAD_CLOSED, now);
            return;
        }
    }
    s->out_len = s->out_sent = 0;
    set_interest(e, s, 0, now);
}

static void next_ids(esc_load_engine_t *e, size_t need)
{
    if (e->ids_len - e->ids_at >= need)
        return;
    /* One getrandom call per block, not per event: at batch size 1 that would be a system call
     * per request. */
    size_t got = 0;
    while (got < e->ids_cap) {
        ssize_t n = getrandom(e->ids + got, e->ids_cap - got, 0);
        if (n > 0)
            got += (size_t)n;
        else if (n < 0 && errno != EINTR)
            break;
    }
    if (got < need) {
        /* getrandom cannot fail on Linux >= 3.17 once the pool is ready. Should it ever, the
         * block is filled from splitmix64 seeded by the clock, so ids stay unique in practice
         * rather than repeating a stale block. */
        uint64_t x = (uint64_t)esc_load_monotonic_ns() ^ (e->next_request_id << 20);
        for (size_t i = got; i < e->ids_cap; i++) {
            uint64_t z = (x += 0x9E3779B97F4A7C15ull);
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            e->ids[i] = (uint8_t)(z ^ (z >> 31));
        }
        got = e->ids_cap;
    }
    e->ids_len = got;
    e->ids_at = 0;
}

/* Sends the slot's next request, or retires the slot when the schedule has no more for it. */
static void slot_issue(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    if (now >= e->deadline_ns) {
        slot_done(e, s);
        return;
    }
    int counted = now >= e->warmup_end_ns;
    if (counted && e->appends_left >= 0) {
        if (e->appends_left == 0) {
            slot_done(e, s);
            return;
        }
        e->appends_left--;
    }
    uint32_t batch = e->config.batch_size;
    const uint8_t *ids = NULL;
    if (e->config.with_ids) {
        size_t need = (size_t)batch * ESC_LOAD_EVENT_ID_BYTES;
        next_ids(e, need);
        ids = e->ids + e->ids_at;
        e->ids_at += need;
    }
    s->request_id = ++e->next_request_id;
    s->out_len += esc_load_encode_request(s->out + s->out_len, s->request_id, batch, ids,
                                          e->key_next, e->config.keys, e->payload,
                                          e->config.payload_len, realtime_us());
    e->key_next = (e->key_next + batch) % e->config.keys;
    s->counted = counted;
    s->sent_ns = now;
    s->expires_ns = now + e->config.timeout_ns;
    note_timer(e, s->expires_ns);
    s->state = SLOT_WAITING;
    slot_flush(e, s, now);
}

/* The link is up (and its handshake done, over TLS): hello, AUTH when there is a token, then
 * the first request, in one write. */
static void slot_start(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    s->out_len = esc_load_encode_hello(s->out);
    s->out_sent = 0;
    if (e->auth != NULL) {
        memcpy(s->out + s->out_len, e->auth, e->auth_len);
        s->out_len += e->auth_len;
        s->auth_pending = 1;
    }
    slot_issue(e, s, now);
}

static void slot_handshake(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    int events = 0;
    char err[ESC_TLS_ERROR_BYTES];
    int rc = esc_tls_handshake_step(s->tls, &events, err, sizeof(err));
    if (rc > 0) {
        slot_start(e, s, now);
    } else if (rc == 0) {
        set_interest(e, s, events == POLLOUT, now);
    } else {
        snprintf(e->tls_error, sizeof(e->tls_error), "%s", err);
        slot_fail(e, s, ESC_LOAD_CONNECT_FAILED, now);
    }
}

static void slot_connected(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    if (e->tls_ctx == NULL) {
        slot_start(e, s, now);
        return;
    }
    s->tls = esc_tls_new(e->tls_ctx, s->fd);
    if (s->tls == NULL) {
        slot_fail(e, s, ESC_LOAD_CONNECT_FAILED, now);
        return;
    }
    s->state = SLOT_HANDSHAKING;
    slot_handshake(e, s, now);
}

static void slot_connect(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    if (now >= e->deadline_ns || e->appends_left == 0) {
        slot_done(e, s);
        return;
    }
    e->figures.connects++;
    int fd = socket(e->target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        slot_fail(e, s, ESC_LOAD_CONNECT_FAILED, now);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->fd = fd;
    int rc = connect(fd, (const struct sockaddr *)&e->target, e->target_len);
    if (rc != 0 && errno != EINPROGRESS) {
        slot_fail(e, s, ESC_LOAD_CONNECT_FAILED, now);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | (rc != 0 ? EPOLLOUT : 0), .data.ptr = s};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        slot_fail(e, s, ESC_LOAD_CONNECT_FAILED, now);
        return;
    }
    s->want_out = rc != 0;
    if (rc == 0) {
        slot_connected(e, s, now);
        return;
    }
    s->state = SLOT_CONNECTING;
    s->expires_ns = now + e->config.timeout_ns;
    note_timer(e, s->expires_ns);
}

static void slot_answered(esc_load_engine_t *e, slot_t *s, const esc_load_answer_t *a, int64_t now)
{
    if (a->outcome != ESC_LOAD_OK) {
        if (a->outcome == ESC_LOAD_NOT_LEADER) {
            size_t n = a->message_len < ESC_LOAD_HINT_BYTES_MAX ? a->message_len : ESC_LOAD_HINT_BYTES_MAX;
            memcpy(e->hint, a->message, n);
            e->hint_len = n;
            e->lookup_needed = 1;
        }
        slot_fail(e, s, a->outcome, now);
        return;
    }
    esc_load_figures_t *f = &e->figures;
    uint32_t batch = e->config.batch_size;
    int64_t us = (now - s->sent_ns) / 1000;
    f->events_acked += batch;
    f->interval_events += batch;
    if (s->counted) {
        tally_add(&f->counted, us);
        f->events += batch;
        f->requests++;
        f->duplicates += a->duplicates;
        if (now > f->last_answer_ns)
            f->last_answer_ns = now;
    } else {
        tally_add(&f->warmup, us);
    }
    s->backoff_ns = e->config.backoff_initial_ns;
    s->in_len = 0;
    slot_issue(e, s, now);
}

/* The AUTH answer leads what a connection with a token reads: take it off the buffer. 0 when it
 * was OK or has not come whole yet; -1 when the slot failed. */
static int slot_take_auth(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    esc_frame f;
    int frame = esc_frame_next(s->in, s->in_len, e->answer_body_max, &f);
    if (frame == ESC_FRAME_NEED_MORE)
        return 0;
    if (frame != ESC_FRAME_WHOLE) {
        slot_fail(e, s, ESC_LOAD_BAD_FRAME, now);
        return -1;
    }
    const uint8_t *body = s->in + ESC_FRAME_HEAD_BYTES;
    if (f.body_len < ESC_CLIENT_ANSWER_HEAD_BYTES || esc_load_u64(body + 1) != 0) {
        slot_fail(e, s, ESC_LOAD_BAD_ANSWER, now);
        return -1;
    }
    if (body[0] != ESC_CLIENT_STATUS_OK) {
        slot_fail(e, s, ESC_LOAD_REFUSED, now); /* Unauthenticated: an unknown or revoked token */
        return -1;
    }
    size_t used = ESC_FRAME_HEAD_BYTES + f.body_len;
    memmove(s->in, s->in + used, s->in_len - used);
    s->in_len -= used;
    s->auth_pending = 0;
    return 0;
}

/* Room for one more read in the slot's input buffer, growing it up to the largest answer plus a
 * chunk; 0, or -1 when the slot failed (out of memory). */
static int slot_room(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    if (s->in_cap - s->in_len < RECV_CHUNK_BYTES) {
        size_t cap = s->in_cap * 2;
        size_t limit = ESC_FRAME_HEAD_BYTES + e->answer_body_max + RECV_CHUNK_BYTES;
        if (cap > limit)
            cap = limit;
        if (cap > s->in_cap) {
            uint8_t *grown = realloc(s->in, cap);
            if (!grown) {
                slot_fail(e, s, ESC_LOAD_CLOSED, now);
                return -1;
            }
            s->in = grown;
            s->in_cap = cap;
        }
    }
    return 0;
}

static void slot_read(esc_load_engine_t *e, slot_t *s, int64_t now)
{
    if (slot_room(e, s, now) != 0)
        return;
    if (s->tls != NULL) {
        /* A session holds what it decrypted beyond the room given, and epoll will not signal
         * it again: read until the session has nothing more (a full buffer at its limit is
         * more than any answer, which the frame check below refuses). */
        for (;;) {
            int events = 0;
            ssize_t n = esc_tls_read(s->tls, s->in + s->in_len, s->in_cap - s->in_len, &events);
            if (n == 0 || n == -2) {
                slot_fail(e, s, ESC_LOAD_CLOSED, now);
                return;
            }
            if (n == -1)
                break;
            s->in_len += (size_t)n;
            if (slot_room(e, s, now) != 0)
                return;
            if (s->in_len == s->in_cap)
                break;
        }
    } else {
        ssize_t n = recv(s->fd, s->in + s->in_len, s->in_cap - s->in_len, 0);
        if (n == 0) {
            slot_fail(e, s, ESC_LOAD_CLOSED, now);
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                slot_fail(e, s, ESC_LOAD_CLOSED, now);
            return;
        }
        s->in_len += (size_t)n;
    }
    esc_frame f;
    if (s->auth_pending && (slot_take_auth(e, s, now) != 0 || s->auth_pending))
        return;
    int frame = esc_frame_next(s->in, s->in_len, e->answer_body_max, &f);
    if (frame == ESC_FRAME_NEED_MORE)
        return;
    if (frame != ESC_FRAME_WHOLE) {
        slot_fail(e, s, ESC_LOAD_BAD_FRAME, now);
        return;
    }
    size_t body_len = f.body_len;
    /* One request is in flight, so exactly one frame may arrive; anything else is damage. */
    if (s->state != SLOT_WAITING || s->in_len != ESC_FRAME_HEAD_BYTES + body_len) {
        slot_fail(e, s, ESC_LOAD_BAD_ANSWER, now);
        return;
    }
    esc_load_answer_t answer;
    esc_load_parse_answer(s->in + ESC_FRAME_HEAD_BYTES, body_len, s->request_id,
                          e->config.batch_size, &answer);
    slot_answered(e, s, &answer, now);
}

static void slot_ready(esc_load_engine_t *e, slot_t *s, uint32_t events, int64_t now)
{
    if (s->state == SLOT_CONNECTING) {
        int error = 0;
        socklen_t len = sizeof(error);
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0 || error != 0) {
            slot_fail(e, s, ESC_LOAD_CONNECT_FAILED, now);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        slot_connected(e, s, now);
        return;
    }
    if (s->state == SLOT_HANDSHAKING) {
        slot_handshake(e, s, now);
        return;
    }
    if (s->state != SLOT_WAITING) {
        /* Bytes or a hang-up on a connection with nothing in flight cannot happen: a slot
         * without a request has closed its socket. Kept as a guard, not a path. */
        return;
    }
    if (s->out_sent < s->out_len && ((events & EPOLLOUT) || s->tls != NULL)) {
        slot_flush(e, s, now);
        if (s->state != SLOT_WAITING)
            return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        slot_read(e, s, now);
}

/* Connects slots whose backoff ran out, expires overdue attempts, and finds the next timer. */
static int service_timers(esc_load_engine_t *e, int64_t now)
{
    int live = 0;
    int64_t next = INT64_MAX;
    for (uint32_t i = 0; i < e->config.slots; i++) {
        slot_t *s = &e->slots[i];
        if ((s->state == SLOT_CONNECTING || s->state == SLOT_HANDSHAKING || s->state == SLOT_WAITING) &&
            s->expires_ns <= now)
            slot_fail(e, s, ESC_LOAD_NO_ANSWER, now);
        if (s->state == SLOT_DISCONNECTED && s->retry_ns <= now && !e->lookup_needed &&
            e->target_len)
            slot_connect(e, s, now);
        if (s->state == SLOT_DISCONNECTED) {
            /* A slot waiting for a target ends with the schedule like any other. */
            if (now >= e->deadline_ns || e->appends_left == 0)
                slot_done(e, s);
            else if (s->retry_ns < next)
                next = s->retry_ns;
        } else if (s->state == SLOT_CONNECTING || s->state == SLOT_HANDSHAKING || s->state == SLOT_WAITING) {
            if (s->expires_ns < next)
                next = s->expires_ns;
        }
        live += s->state != SLOT_DONE;
    }
    if (e->deadline_ns < next && e->deadline_ns > now)
        next = e->deadline_ns;
    e->next_timer_ns = next;
    return live;
}

int esc_load_run(esc_load_engine_t *e, int64_t until_ns)
{
    struct epoll_event events[EPOLL_EVENTS_MAX];
    e->next_timer_ns = 0; /* look at every slot on entry: the target or schedule may be new */
    for (;;) {
        int64_t now = esc_load_monotonic_ns();
        if (now >= e->next_timer_ns && service_timers(e, now) == 0)
            return ESC_LOAD_RUN_DONE;
        if (e->lookup_needed)
            return ESC_LOAD_RUN_LOOKUP;
        if (now >= until_ns)
            return ESC_LOAD_RUN_UNTIL;
        int64_t wake = until_ns < e->next_timer_ns ? until_ns : e->next_timer_ns;
        int64_t wait_ns = wake - now;
        /* Round up: waking a little late is harmless, waking early spins. */
        int timeout_ms = wait_ns > 60000000000LL ? 60000 : (int)((wait_ns + 999999) / 1000000);
        int n = epoll_wait(e->epfd, events, EPOLL_EVENTS_MAX, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return ESC_LOAD_RUN_SYSTEM_ERROR;
        }
        for (int i = 0; i < n; i++)
            slot_ready(e, events[i].data.ptr, events[i].events, esc_load_monotonic_ns());
    }
}
