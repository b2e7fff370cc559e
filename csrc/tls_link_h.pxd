# Declarations of csrc/tls_link.h for cimport; link with `# distutils: sources = csrc/tls_link.c`.
from libc.stdint cimport int64_t, uint8_t

from posix.uio cimport iovec


cdef extern from "tls_link.h" nogil:
    int ESC_TLS_ERROR_BYTES

    ctypedef struct esc_tls_ctx:
        pass

    ctypedef struct esc_tls:
        pass

    int esc_tls_available()
    esc_tls_ctx *esc_tls_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                                 size_t err_bytes)
    void esc_tls_ctx_free(esc_tls_ctx *ctx)
    esc_tls *esc_tls_new(esc_tls_ctx *ctx, int fd)
    void esc_tls_free(esc_tls *tls)
    int esc_tls_handshake(esc_tls *tls, int timeout_ms, char *err, size_t err_bytes)
    int64_t esc_tls_peer_node(esc_tls *tls)
    int esc_tls_write_all(esc_tls *tls, const iovec *iov, int iovcnt, int timeout_ms)
    int esc_tls_handshake_step(esc_tls *tls, int *events, char *err, size_t err_bytes)
    ssize_t esc_tls_write(esc_tls *tls, const void *data, size_t n, int *events)
    ssize_t esc_tls_read(esc_tls *tls, void *out, size_t n, int *events)
    esc_tls_ctx *esc_tls_server_ctx_new(const char *ca_file, const char *cert_file, const char *key_file, char *err,
                                        size_t err_bytes)
    esc_tls *esc_tls_new_server(esc_tls_ctx *ctx)
    int esc_tls_mem_feed(esc_tls *tls, const void *data, size_t n)
    size_t esc_tls_mem_outgoing(const esc_tls *tls)
    size_t esc_tls_mem_take(esc_tls *tls, void *out, size_t n)
    int esc_tls_handshake_done(const esc_tls *tls)
    void esc_tls_error_text(esc_tls *tls, char *err, size_t err_bytes)
