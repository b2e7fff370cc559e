# Declarations of csrc/send_all.h for cimport; link with `# distutils: sources = csrc/send_all.c`.
from posix.uio cimport iovec


cdef extern from "send_all.h" nogil:
    int esc_send_all(int fd, iovec *iov, int iovcnt, int timeout_ms, int flags)
