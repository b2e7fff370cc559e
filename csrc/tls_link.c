/* TLS for the native links; see tls_link.h. */
#include "tls_link.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef ESC_NO_TLS

int esc_tls_available(void) { return 0; }

esc_tls_ctx *esc_tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                             size_t err_bytes)
{
    (void)ca_file;
    (void)cert_file;
    (void)key_file;
    snprintf(err, err_bytes, "this build has no native TLS: OpenSSL's headers (libssl-dev) were missing when it "
             "was compiled");
    return NULL;
}
void esc_tls_ctx_free(esc_tls_ctx *ctx) { (void)ctx; }
esc_tls *esc_tls_new(esc_tls_ctx *ctx, int fd) { (void)ctx; (void)fd; return NULL; }
void esc_tls_free(esc_tls *tls) { (void)tls; }
int esc_tls_handshake_step(esc_tls *tls, int *events, char *err, size_t err_bytes)
{
    (void)tls;
    *events = 0;
    snprintf(err, err_bytes, "no native TLS");
    return -1;
}
int esc_tls_handshake(esc_tls *tls, int timeout_ms, char *err, size_t err_bytes)
{
    int events;
    (void)timeout_ms;
    return esc_tls_handshake_step(tls, &events, err, err_bytes);
}
int64_t esc_tls_peer_node(esc_tls *tls) { (void)tls; return -1; }
ssize_t esc_tls_write(esc_tls *tls, const void *data, size_t n, int *events)
{
    (void)tls; (void)data; (void)n; *events = 0;
    return -1;
}
ssize_t esc_tls_read(esc_tls *tls, void *out, size_t n, int *events)
{
    (void)tls; (void)out; (void)n; *events = 0;
    return -2;
}
size_t esc_tls_pending(const esc_tls *tls) { (void)tls; return 0; }
int esc_tls_write_all(esc_tls *tls, const struct iovec *iov, int iovcnt, int timeout_ms)
{
    (void)tls; (void)iov; (void)iovcnt; (void)timeout_ms;
    return -EPIPE;
}
esc_tls_ctx *esc_tls_server_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                                    size_t err_bytes)
{
    return esc_tls_ctx_new(ca_file, cert_file, key_file, err, err_bytes);
}
esc_tls *esc_tls_new_server(esc_tls_ctx *ctx) { (void)ctx; return NULL; }
int esc_tls_mem_feed(esc_tls *tls, const void *data, size_t n) { (void)tls; (void)data; (void)n; return -1; }
size_t esc_tls_mem_outgoing(const esc_tls *tls) { (void)tls; return 0; }
size_t esc_tls_mem_take(esc_tls *tls, void *out, size_t n) { (void)tls; (void)out; (void)n; return 0; }
int esc_tls_handshake_done(const esc_tls *tls) { (void)tls; return 0; }
void esc_tls_error_text(esc_tls *tls, char *err, size_t err_bytes) { (void)tls; snprintf(err, err_bytes, "no native TLS"); }

#else

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

struct esc_tls_ctx {
    SSL_CTX *ssl_ctx;
};

struct esc_tls {
    SSL *ssl;
    uint8_t record[ESC_TLS_RECORD_BYTES]; /* esc_tls_write_all gathers a record's plaintext here */
};

int esc_tls_available(void) { return 1; }

static void openssl_reason(const char *what, char *err, size_t err_bytes)
{
    unsigned long code = ERR_get_error();
    char reason[160] = "no detail";
    if (code)
        ERR_error_string_n(code, reason, sizeof(reason));
    ERR_clear_error();
    snprintf(err, err_bytes, "%s: %s", what, reason);
}

/* A context of `method` that trusts ca_file and, when both are given, presents cert_file and
 * key_file; the peer's certificate is checked when it presents one (see the callers). */
static esc_tls_ctx *make_ctx(const SSL_METHOD *method, const char *ca_file, const char *cert_file,
                             const char *key_file, char *err, size_t err_bytes)
{
    esc_tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        snprintf(err, err_bytes, "out of memory");
        return NULL;
    }
    ctx->ssl_ctx = SSL_CTX_new(method);
    if (ctx->ssl_ctx == NULL) {
        openssl_reason("cannot make a TLS context", err, err_bytes);
        free(ctx);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl_ctx, TLS1_2_VERSION);
    /* A write interrupted by a full socket is retried from wherever the caller's bytes are. */
    SSL_CTX_set_mode(ctx->ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx->ssl_ctx, ca_file, NULL) != 1) {
        openssl_reason(ca_file, err, err_bytes);
        esc_tls_ctx_free(ctx);
        return NULL;
    }
    if (cert_file != NULL && key_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx->ssl_ctx, cert_file) != 1) {
            openssl_reason(cert_file, err, err_bytes);
            esc_tls_ctx_free(ctx);
            return NULL;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx->ssl_ctx) != 1) {
            openssl_reason(key_file, err, err_bytes);
            esc_tls_ctx_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

esc_tls_ctx *esc_tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                             size_t err_bytes)
{
    /* A client requires the server's certificate: the handshake fails without one of the CA. */
    return make_ctx(TLS_client_method(), ca_file, cert_file, key_file, err, err_bytes);
}

void esc_tls_ctx_free(esc_tls_ctx *ctx)
{
    if (ctx == NULL)
        return;
    SSL_CTX_free(ctx->ssl_ctx);
    free(ctx);
}

esc_tls *esc_tls_new(esc_tls_ctx *ctx, int fd)
{
    esc_tls *tls = malloc(sizeof(*tls));
    if (tls == NULL)
        return NULL;
    tls->ssl = SSL_new(ctx->ssl_ctx);
    if (tls->ssl == NULL || SSL_set_fd(tls->ssl, fd) != 1) {
        SSL_free(tls->ssl);
        free(tls);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_connect_state(tls->ssl);
    return tls;
}

void esc_tls_free(esc_tls *tls)
{
    if (tls == NULL)
        return;
    SSL_free(tls->ssl); /* no close_notify: the caller closes the socket, the peer sees its end */
    free(tls);
}

/* What an SSL call's result means: > 0 done, 0 wait for *events, < 0 failed. */
static int outcome(esc_tls *tls, int rc, int *events)
{
    switch (SSL_get_error(tls->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        *events = POLLIN;
        return 0;
    case SSL_ERROR_WANT_WRITE:
        *events = POLLOUT;
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        return -2; /* the peer's close_notify */
    default:
        return -1;
    }
}

int esc_tls_handshake_step(esc_tls *tls, int *events, char *err, size_t err_bytes)
{
    int rc = SSL_do_handshake(tls->ssl);
    if (rc == 1)
        return 1;
    rc = outcome(tls, rc, events);
    if (rc == 0)
        return 0;
    if (SSL_get_verify_result(tls->ssl) != X509_V_OK) {
        snprintf(err, err_bytes, "the certificate is not of this cluster's CA: %s",
                 X509_verify_cert_error_string(SSL_get_verify_result(tls->ssl)));
        ERR_clear_error();
    } else {
        openssl_reason("TLS handshake failed", err, err_bytes);
    }
    return -1;
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int esc_tls_handshake(esc_tls *tls, int timeout_ms, char *err, size_t err_bytes)
{
    int64_t ends = monotonic_ms() + timeout_ms;
    for (;;) {
        int events = 0, rc = esc_tls_handshake_step(tls, &events, err, err_bytes);
        if (rc != 0)
            return rc > 0 ? 0 : -1;
        int64_t left = ends - monotonic_ms();
        struct pollfd pfd = {SSL_get_fd(tls->ssl), (short)events, 0};
        if (left <= 0 || (poll(&pfd, 1, (int)left) == 0)) {
            snprintf(err, err_bytes, "TLS handshake not done within %d ms", timeout_ms);
            return -1;
        }
    }
}

int64_t esc_tls_peer_node(esc_tls *tls)
{
    X509 *cert = SSL_get1_peer_certificate(tls->ssl);
    char cn[64];
    int64_t id = -1;
    if (cert == NULL)
        return -1;
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    X509_free(cert);
    /* "esc-node-" then 1 to 19 ASCII digits, nothing else (eventstream/tls.py NODE_CN). */
    if (n > 9 && n <= 9 + 19 && memcmp(cn, "esc-node-", 9) == 0) {
        int64_t v = 0;
        int i;
        for (i = 9; i < n; i++) {
            if (cn[i] < '0' || cn[i] > '9' || v > (INT64_MAX - 9) / 10)
                return -1;
            v = v * 10 + (cn[i] - '0');
        }
        id = v;
    }
    return id;
}

ssize_t esc_tls_write(esc_tls *tls, const void *data, size_t n, int *events)
{
    size_t written = 0;
    int rc = SSL_write_ex(tls->ssl, data, n, &written);
    if (rc == 1)
        return (ssize_t)written;
    rc = outcome(tls, 0, events);
    ERR_clear_error();
    return rc == 0 ? 0 : -1;
}

ssize_t esc_tls_read(esc_tls *tls, void *out, size_t n, int *events)
{
    size_t got = 0;
    int rc = SSL_read_ex(tls->ssl, out, n, &got);
    if (rc == 1)
        return (ssize_t)got;
    rc = outcome(tls, 0, events);
    ERR_clear_error();
    if (rc == 0)
        return -1;
    return rc == -2 ? 0 : -2;
}

size_t esc_tls_pending(const esc_tls *tls) { return (size_t)SSL_pending(tls->ssl); }

static int write_fully(esc_tls *tls, const uint8_t *data, size_t n, int timeout_ms)
{
    while (n > 0) {
        int events = 0;
        ssize_t took = esc_tls_write(tls, data, n, &events);
        if (took > 0) {
            data += took;
            n -= (size_t)took;
            continue;
        }
        if (took < 0)
            return -EPIPE;
        struct pollfd pfd = {SSL_get_fd(tls->ssl), (short)events, 0};
        int ready = poll(&pfd, 1, timeout_ms);
        if (ready < 0 && errno != EINTR)
            return -errno;
        if (ready == 0)
            return -ETIMEDOUT;
    }
    return 0;
}

int esc_tls_write_all(esc_tls *tls, const struct iovec *iov, int iovcnt, int timeout_ms)
{
    size_t used = 0;
    int i, rc;
    for (i = 0; i < iovcnt; i++) {
        const uint8_t *at = iov[i].iov_base;
        size_t left = iov[i].iov_len;
        /* A piece of a record's size or more goes out as it is; smaller ones are gathered. */
        if (used == 0 && left >= ESC_TLS_RECORD_BYTES) {
            if ((rc = write_fully(tls, at, left, timeout_ms)) != 0)
                return rc;
            continue;
        }
        while (left > 0) {
            size_t take = ESC_TLS_RECORD_BYTES - used < left ? ESC_TLS_RECORD_BYTES - used : left;
            memcpy(tls->record + used, at, take);
            used += take;
            at += take;
            left -= take;
            if (used == ESC_TLS_RECORD_BYTES) {
                if ((rc = write_fully(tls, tls->record, used, timeout_ms)) != 0)
                    return rc;
                used = 0;
            }
        }
    }
    return used ? write_fully(tls, tls->record, used, timeout_ms) : 0;
}

esc_tls_ctx *esc_tls_server_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                                    size_t err_bytes)
{
    /* A server asks for a certificate and checks one when given; none given is a client's
     * right (SSL_VERIFY_PEER without FAIL_IF_NO_PEER_CERT). */
    if (cert_file == NULL || key_file == NULL) {
        snprintf(err, err_bytes, "a server needs its certificate and key");
        return NULL;
    }
    return make_ctx(TLS_server_method(), ca_file, cert_file, key_file, err, err_bytes);
}

esc_tls *esc_tls_new_server(esc_tls_ctx *ctx)
{
    esc_tls *tls = malloc(sizeof(*tls));
    BIO *in, *out;
    if (tls == NULL)
        return NULL;
    tls->ssl = SSL_new(ctx->ssl_ctx);
    in = BIO_new(BIO_s_mem());
    out = BIO_new(BIO_s_mem());
    if (tls->ssl == NULL || in == NULL || out == NULL) {
        SSL_free(tls->ssl);
        BIO_free(in);
        BIO_free(out);
        free(tls);
        ERR_clear_error();
        return NULL;
    }
    /* An empty input buffer reads as "retry later", not as the end of the stream. */
    BIO_set_mem_eof_return(in, -1);
    SSL_set_bio(tls->ssl, in, out);
    SSL_set_accept_state(tls->ssl);
    return tls;
}

int esc_tls_mem_feed(esc_tls *tls, const void *data, size_t n)
{
    size_t written = 0;
    if (n == 0)
        return 0;
    return BIO_write_ex(SSL_get_rbio(tls->ssl), data, n, &written) == 1 && written == n ? 0 : -1;
}

size_t esc_tls_mem_outgoing(const esc_tls *tls) { return (size_t)BIO_ctrl_pending(SSL_get_wbio(tls->ssl)); }

size_t esc_tls_mem_take(esc_tls *tls, void *out, size_t n)
{
    size_t got = 0;
    if (n == 0 || BIO_read_ex(SSL_get_wbio(tls->ssl), out, n, &got) != 1)
        return 0;
    return got;
}

int esc_tls_handshake_done(const esc_tls *tls) { return SSL_is_init_finished(tls->ssl); }

void esc_tls_error_text(esc_tls *tls, char *err, size_t err_bytes)
{
    long verify = SSL_get_verify_result(tls->ssl);
    if (verify != X509_V_OK) {
        snprintf(err, err_bytes, "its certificate is not of this cluster's CA (%s)",
                 X509_verify_cert_error_string(verify));
        ERR_clear_error();
        return;
    }
    openssl_reason("TLS failed", err, err_bytes);
}

#endif /* ESC_NO_TLS */
