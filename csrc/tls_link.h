/*
 * TLS on a socket the native layer writes itself: the replication workers' links to their
 * followers and esc-bench's load engine. OpenSSL is driven here over the same non-blocking
 * socket the plain path uses, so the hot loops keep their shape with TLS on: they hand bytes to
 * esc_tls_* instead of send/recv. Only the client side lives here (the node's listen port is
 * served by the event loop's TLS); the rules are those of eventstream/tls.py: TLS 1.2 or later,
 * the server's certificate must be of the cluster's CA, host names are not checked, and a
 * node's certificate names it as common name "esc-node-<id>".
 *
 * Built without OpenSSL's headers (ESC_NO_TLS), every constructor fails with a message that
 * says so and esc_tls_available() is 0; the callers then refuse TLS with that message.
 */
#ifndef ESC_TLS_LINK_H
#define ESC_TLS_LINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define ESC_TLS_ERROR_BYTES 256
/* Plaintext handed to one SSL_write: the largest TLS record, so gathered frames fill records. */
#define ESC_TLS_RECORD_BYTES 16384

typedef struct esc_tls_ctx esc_tls_ctx;
typedef struct esc_tls esc_tls;

int esc_tls_available(void);

/* A client context trusting ca_file; cert_file/key_file (both or neither) are presented to the
 * server. NULL on failure, with the reason in err. */
esc_tls_ctx *esc_tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                             size_t err_bytes);
void esc_tls_ctx_free(esc_tls_ctx *ctx);

/* A client session on fd (non-blocking, connected); NULL when out of memory. fd stays the
 * caller's: esc_tls_free does not close it. */
esc_tls *esc_tls_new(esc_tls_ctx *ctx, int fd);
void esc_tls_free(esc_tls *tls);

/* One step of the handshake: 1 done, 0 not yet (*events: POLLIN or POLLOUT to wait for),
 * -1 failed (reason in err). */
int esc_tls_handshake_step(esc_tls *tls, int *events, char *err, size_t err_bytes);
/* The whole handshake, waiting with poll for at most timeout_ms in all: 0, or -1 (err). */
int esc_tls_handshake(esc_tls *tls, int timeout_ms, char *err, size_t err_bytes);
/* The node id the server's certificate names, or -1 when it names none. */
int64_t esc_tls_peer_node(esc_tls *tls);

/* Write up to n bytes: the count taken (> 0), 0 when the socket must first be ready for
 * *events, -1 when the link failed. A call that returned 0 must be repeated with the same bytes. */
ssize_t esc_tls_write(esc_tls *tls, const void *data, size_t n, int *events);
/* Read up to n bytes: the count (> 0), 0 at the peer's close, -1 when nothing can be read
 * until *events, -2 when the link failed. */
ssize_t esc_tls_read(esc_tls *tls, void *out, size_t n, int *events);
/* Decrypted bytes held inside the session: a reader must take them before waiting on the
 * socket, which will not signal them. */
size_t esc_tls_pending(const esc_tls *tls);

/* Write a gather list in full, TLS records of up to ESC_TLS_RECORD_BYTES, waiting with poll at
 * most timeout_ms per wait: 0, or -errno (-ETIMEDOUT, -EPIPE for a failed link). */
int esc_tls_write_all(esc_tls *tls, const struct iovec *iov, int iovcnt, int timeout_ms);

/* -- the server side, over memory buffers ------------------------------------------------- *
 * The node's listen port: the event loop reads the socket and hands the bytes in
 * (esc_tls_mem_feed); what the session has to send waits in its outgoing buffer
 * (esc_tls_mem_take) for whoever writes the socket: the event loop, or the native answer path.
 * Reads and writes of plaintext are esc_tls_read / esc_tls_write on the same session; a read
 * that finds no whole record returns -1 (feed more), a write never waits. */

/* A server context: this node's certificate; a client's certificate is checked against the CA
 * when one is presented (peers must, clients need not). */
esc_tls_ctx *esc_tls_server_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                                    size_t err_bytes);
esc_tls *esc_tls_new_server(esc_tls_ctx *ctx);
/* 0, or -1 when out of memory. */
int esc_tls_mem_feed(esc_tls *tls, const void *data, size_t n);
size_t esc_tls_mem_outgoing(const esc_tls *tls);
/* Move up to n outgoing bytes to out; the count. */
size_t esc_tls_mem_take(esc_tls *tls, void *out, size_t n);
int esc_tls_handshake_done(const esc_tls *tls);
/* Why the session failed, for a log line (after a handshake step or read returned an error). */
void esc_tls_error_text(esc_tls *tls, char *err, size_t err_bytes);

#endif /* ESC_TLS_LINK_H */
