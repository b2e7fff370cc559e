# TLS on the node's listen port, driven from native code over memory buffers (tls_link.h):
# part of the eventstream.transport._append_intake extension, so a client connection's answers
# are encrypted and written by the intake's flush like plain ones, without a pass through
# Python per answer. csrc/_append_intake.pyx includes it after the declarations it uses.


class TlsSessionError(ValueError):
    """The other side broke the TLS session (a failed handshake, a bad record)."""


cdef class TlsServer:
    """The port's TLS context: this node's certificate; a client's is checked against the CA
    when presented. TlsSessionError when a file cannot be used or the build has no native TLS."""
    cdef esc_tls_ctx *ctx

    def __cinit__(self, ca_file, cert_file, key_file):
        cdef char err[256]
        ca, cert, key = os.fsencode(ca_file), os.fsencode(cert_file), os.fsencode(key_file)
        self.ctx = esc_tls_server_ctx_new(ca, cert, key, err, sizeof(err))
        if self.ctx == NULL:
            raise TlsSessionError(err.decode(errors="replace"))

    def __dealloc__(self):
        esc_tls_ctx_free(self.ctx)


cdef class TlsServerSession:
    """One accepted connection's TLS session: feed() it what the socket delivered, write what
    it returns to the socket; encrypt() what is to be sent. Not shared between threads."""
    cdef esc_tls *tls
    cdef readonly bint handshake_done
    cdef readonly bint closed_by_peer  # its close_notify came: the stream ended cleanly
    cdef object server  # keeps the context alive as long as the session

    def __cinit__(self, TlsServer server):
        self.server = server
        self.tls = esc_tls_new_server(server.ctx)
        if self.tls == NULL:
            raise MemoryError("no memory for a TLS session")

    def __dealloc__(self):
        esc_tls_free(self.tls)

    cdef bytes _outgoing(self):
        cdef size_t n = esc_tls_mem_outgoing(self.tls)
        if n == 0:
            return b""
        out = PyBytes_FromStringAndSize(NULL, n)
        esc_tls_mem_take(self.tls, <uint8_t *>PyBytes_AS_STRING(out), n)
        return out

    def feed(self, data):
        """(plaintext, outgoing): the application bytes the records in `data` completed, and
        what the session must send now (handshake messages). TlsSessionError when the other
        side broke the session; its outgoing alert is in the error's args[1]."""
        cdef const unsigned char[::1] view = as_byte_view(data)
        cdef char err[256]
        cdef int events = 0, rc
        cdef ssize_t n
        cdef PyObject *plain = NULL
        cdef size_t room, have = 0
        if view.shape[0] and esc_tls_mem_feed(self.tls, &view[0], view.shape[0]) != 0:
            raise MemoryError("no memory for received TLS bytes")
        if not self.handshake_done:
            rc = esc_tls_handshake_step(self.tls, &events, err, sizeof(err))
            if rc < 0:
                raise TlsSessionError(err.decode(errors="replace"), self._outgoing())
            if rc == 0:
                return b"", self._outgoing()
            self.handshake_done = True
        # The plaintext is read straight into the bytes object returned (shrunk to its size at
        # the end), so each read's bytes are copied once after decryption, not twice.
        room = <size_t>view.shape[0] + 16384
        plain_obj = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>room)
        plain = <PyObject *>plain_obj
        Py_INCREF(plain_obj)  # the reference _PyBytes_Resize may replace
        plain_obj = None
        try:
            while True:
                if room - have < 16384:
                    room *= 2
                    _PyBytes_Resize(&plain, <Py_ssize_t>room)
                n = esc_tls_read(self.tls, <uint8_t *>PyBytes_AS_STRING(<object>plain) + have, room - have,
                                 &events)
                if n > 0:
                    have += <size_t>n
                    continue
                if n == -1:
                    break
                if n == 0:
                    self.closed_by_peer = True
                    break
                esc_tls_error_text(self.tls, err, sizeof(err))
                raise TlsSessionError(err.decode(errors="replace"), self._outgoing())
            _PyBytes_Resize(&plain, <Py_ssize_t>have)
            result = <object>plain
        finally:
            Py_XDECREF(plain)
        return result, self._outgoing()

    def encrypt(self, data):
        """The records carrying `data`, to write to the socket after everything before."""
        cdef const unsigned char[::1] view = as_byte_view(data)
        cdef size_t at = 0
        cdef ssize_t n
        cdef int events = 0
        while at < <size_t>view.shape[0]:
            n = esc_tls_write(self.tls, &view[at], view.shape[0] - at, &events)
            if n <= 0:
                raise TlsSessionError("the TLS session cannot take more data")
            at += <size_t>n
        return self._outgoing()

    def peer_node(self):
        """The node id the other side's certificate names (checked against the CA), or None."""
        cdef int64_t node = esc_tls_peer_node(self.tls)
        return None if node < 0 else node


cdef int _append_nogil(Buffer *b, const uint8_t *data, size_t n) noexcept nogil:
    cdef size_t capacity = b.capacity if b.capacity else 4096
    cdef uint8_t *grown
    while capacity < b.length + n:
        capacity *= 2
    if capacity != b.capacity:
        grown = <uint8_t *>realloc(b.data, capacity)
        if grown == NULL:
            return -1
        b.data = grown
        b.capacity = capacity
    memcpy(b.data + b.length, data, n)
    b.length += n
    return 0


cdef int _tls_flush(Slot *s, uint8_t *chunk, size_t chunk_bytes) noexcept nogil:
    """Encrypt a TLS slot's queued answers and write the records to its socket. Records the
    socket does not take stay in the slot's outbound buffer, marked as records (they must go
    out before anything else, through the transport). 0, or an errno."""
    cdef ssize_t n
    cdef size_t taken, sent
    cdef int events = 0
    cdef size_t at = 0
    while at < s.outbound.length:
        # A record at a time (partial writes are on); a memory buffer takes them all.
        n = esc_tls_write(s.tls, s.outbound.data + at, s.outbound.length - at, &events)
        if n <= 0:
            return EPIPE  # a broken session
        at += <size_t>n
    s.outbound.length = 0
    while esc_tls_mem_outgoing(s.tls):
        taken = esc_tls_mem_take(s.tls, chunk, chunk_bytes)
        sent = 0
        while sent < taken:
            n = send(s.fd, chunk + sent, taken - sent, MSG_DONTWAIT | MSG_NOSIGNAL)
            if n > 0:
                sent += <size_t>n
            elif n < 0 and errno == EINTR:
                continue
            else:
                if n < 0 and errno != EAGAIN:
                    return errno
                # The socket is full: keep what is left, already encrypted, for the transport.
                if _append_nogil(&s.outbound, chunk + sent, taken - sent) != 0:
                    return ENOMEM
                s.outbound_records = True
                while esc_tls_mem_outgoing(s.tls):
                    taken = esc_tls_mem_take(s.tls, chunk, chunk_bytes)
                    if _append_nogil(&s.outbound, chunk, taken) != 0:
                        return ENOMEM
                return 0
    return 0
