/*
 * Write a gather list to a (non-blocking) socket in full, waiting with poll() when the socket's
 * buffer is full, for at most timeout_ms per wait. Used by the replication workers to send
 * frames straight from the shared ring, without copying them into a send buffer first.
 */
#ifndef ESC_SEND_ALL_H
#define ESC_SEND_ALL_H

#include <sys/uio.h>

/* 0 when every byte was written; -errno otherwise (-ETIMEDOUT when a wait ran out). iov is
 * modified (advanced past what was written). */
int esc_send_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms);

#endif /* ESC_SEND_ALL_H */
