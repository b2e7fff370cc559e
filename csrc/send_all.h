/*
 * Write a gather list to a (non-blocking) socket in full, waiting with poll() when the socket's
 * buffer is full, for at most timeout_ms per wait. Used by the replication workers to send
 * frames straight from the shared ring, without copying them into a send buffer first.
 */
#ifndef ESC_SEND_ALL_H
#define ESC_SEND_ALL_H

#include <sys/uio.h>

/* 0 when every byte was written; -errno otherwise (-ETIMEDOUT when a wait ran out). iov is
 * modified (advanced past what was written). flags are sendmsg's (MSG_MORE: more follows, do not
 * push a partial segment yet); MSG_NOSIGNAL is always added. */
int esc_send_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms, int flags);

#endif /* ESC_SEND_ALL_H */
