/* Full writes of a gather list to a non-blocking socket; see send_all.h. */
#include "send_all.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>

/* POSIX guarantees at least 16; Linux allows 1024, the most append_stream.h queues. */
#define SEND_IOV_MAX 1024

int esc_send_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms, int flags)
{
    struct msghdr msg = {0};
    while (iovcnt > 0) {
        ssize_t sent;
        msg.msg_iov = iov;
        msg.msg_iovlen = (size_t)(iovcnt < SEND_IOV_MAX ? iovcnt : SEND_IOV_MAX);
        /* MSG_NOSIGNAL: a closed peer is an EPIPE to report, not a SIGPIPE to the worker. */
        sent = sendmsg(fd, &msg, flags | MSG_NOSIGNAL);
        if (sent < 0) {
            struct pollfd pfd = {fd, POLLOUT, 0};
            int ready;
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -errno;
            ready = poll(&pfd, 1, timeout_ms);
            if (ready < 0 && errno != EINTR)
                return -errno;
            if (ready == 0)
                return -ETIMEDOUT;
            continue;
        }
        while (iovcnt > 0 && (size_t)sent >= iov->iov_len) {
            sent -= (ssize_t)iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (char *)iov->iov_base + sent;
            iov->iov_len -= (size_t)sent;
        }
    }
    return 0;
}
