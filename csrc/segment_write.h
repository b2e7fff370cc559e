/*
 * Positional writes into a WAL segment file: a vectored write that resumes after short writes
 * and EINTR, and best-effort block preallocation ahead of the write position. Plain C so that
 * eventstream._wal calls them without the GIL.
 */
#ifndef ESC_SEGMENT_WRITE_H
#define ESC_SEGMENT_WRITE_H

#include <errno.h>
#include <fcntl.h> /* fallocate; Python.h, included first, defines _GNU_SOURCE */
#include <sys/types.h>
#include <sys/uio.h>

#define ESC_IOV_BATCH 512 /* below every platform's IOV_MAX */

/* Writes every byte of iov[0 .. count) at `offset`; advances iov past what was written.
 * Returns 0, or the errno of the failed call (EIO when the kernel reports no progress). */
static inline int esc_pwritev_all(int fd, struct iovec *iov, int count, off_t offset)
{
    for (;;) {
        while (count > 0 && iov->iov_len == 0) {
            iov++;
            count--;
        }
        if (count == 0)
            return 0;
        ssize_t written = pwritev(fd, iov, count < ESC_IOV_BATCH ? count : ESC_IOV_BATCH, offset);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (written == 0)
            return EIO;
        offset += written;
        while ((size_t)written >= iov->iov_len) {
            written -= (ssize_t)iov->iov_len;
            iov++;
            count--;
            if (count == 0)
                return 0;
        }
        iov->iov_base = (char *)iov->iov_base + written;
        iov->iov_len -= (size_t)written;
    }
}

/*
 * Reserves disk blocks for [offset, offset + length) without changing the file size, so later
 * appends there skip delayed-allocation bookkeeping (on ext4 a 64 KiB append cost about 2 us
 * less CPU). Returns 0 or an errno; callers ignore failure, since the write that follows
 * reports any real lack of space.
 */
static inline int esc_preallocate(int fd, off_t offset, off_t length)
{
#if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE)
    return fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) == 0 ? 0 : errno;
#else
    (void)fd;
    (void)offset;
    (void)length;
    return ENOTSUP;
#endif
}

#endif /* ESC_SEGMENT_WRITE_H */
