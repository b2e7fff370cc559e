"""A replication worker: the process that moves one follower's bytes for a leader in pool mode.

Started by eventstream/replication/pool.py as `python -m eventstream.replication.worker` with
inherited file descriptors: the shared entry ring (the leader's new log entries, each written
once for all followers), this follower's control ring (node -> worker orders), its status ring
(worker -> node reports), the read end of its doorbell pipe and the write end of the node's.

The worker owns one TCP link to its follower (hello role ROLE_REPLICATION). The follower sends
its answers to the leader's replication messages back on this link (transport/peers.py), so
the worker reads them and relays each as a compact status record, which the node turns back
into the Message the core would have received in-process.

The worker never decides what to send (Progress stays in the core, CONVENTIONS 4). It carries
out two kinds of order:
    APPEND   "send entries lo..hi, read from the entry ring at position pos, as AppendEntries
             at term T after (prev index, prev term) with commit C". Consecutive orders that
             continue each other (same term, contiguous in index and in the ring) are sent as one
             message of at most append_bytes_max bytes and APPEND_ENTRIES_MAX entries; the
             follower then acks them at once. The core's in-flight window already bounds how
             many orders exist, so the worker keeps no window of its own.
    MESSAGE  a message the core encoded in full (heartbeats, snapshot chunks, entries that are
             no longer, or never were, in the entry ring): framed and sent as it is.
An AppendEntries goes to the socket with its entries' bytes read straight from the entry ring
(csrc/append_stream.h). When the entries an order names were overwritten in the entry ring
before the worker got to them (it fell a whole ring behind), nothing is sent: the worker reports
STALE and the node re-probes the follower, which then gets them from the log (§5.3 consistency
check). When they were overwritten while the kernel copied them, the frame is left without its
last byte, so the follower can never take it, and the link is dropped and redialled; the node
re-probes on CONNECTED.

When the link is down the worker discards orders, tells the node (UNREACHABLE), redials with
capped backoff, and says CONNECTED once back: the node then re-probes the follower, so what
was discarded is resent from the log. The worker exits when its parent is gone, so a SIGKILLed
node leaves no workers behind.

Control records (kind, then little-endian fields):
    MESSAGE  (1)  an encoded peer message (transport/peer_codec.py)
    APPEND   (2)  APPEND_ORDER: term, prev_index, prev_term, commit, lo, hi, pos, end, data_bytes,
                  published_ns (the node's CLOCK_MONOTONIC when it wrote the order)
Status records:
    CONNECTED    (1)  link (re)established
    UNREACHABLE  (2)  u64 records dropped since the last report
    STATS        (3)  STATS_LAYOUT: u64 messages, bytes, sends, dropped, then the wake-up counters
                      (WakeCounters: sleeps, doorbell wakes, missed wake-ups, order wait sum ns
                      and ORDER_WAIT_BOUNDS_S bucket counts); totals since the worker started
    RESPONSE     (4)  RESPONSE_LAYOUT: the fields of one follower answer
    STALE        (5)  u64 the first index of an order whose entries were overwritten
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time

from eventstream._crc32c import crc32c
from eventstream._spsc_ring import (
    APPEND_OVERHEAD_BYTES,
    SEND_LAPPED,
    SEND_TOO_MANY,
    AppendStream,
    EntryRing,
    SpscRing,
)
from eventstream.raft.messages import Message, MessageType
from eventstream.transport.frames import FrameDecoder, FrameError, frame_header
from eventstream.transport.hello import ROLE_REPLICATION, Hello
from eventstream.transport.peer_codec import PeerCodecError, decode_message

ORDER_MESSAGE = 1
ORDER_APPEND = 2
APPEND_ORDER = struct.Struct("<QQQQQQQQQQ")
# Upper bounds of the order-wait histogram: from the node writing an APPEND order to the worker
# taking it. Its tail is the wake-up delay of a sleeping worker (doorbell, then the scheduler).
ORDER_WAIT_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_ORDER_WAIT_BOUNDS_NS = [int(b * 1e9) for b in ORDER_WAIT_BOUNDS_S]

STATUS_CONNECTED = 1
STATUS_UNREACHABLE = 2
STATUS_STATS = 3
STATUS_RESPONSE = 4
STATUS_STALE = 5
STATS_LAYOUT = struct.Struct("<" + "Q" * (8 + len(ORDER_WAIT_BOUNDS_S) + 1))
COUNT_LAYOUT = struct.Struct("<Q")
# type, reject, then term, index, log_term, hint_index, read_seq, offset.
RESPONSE_LAYOUT = struct.Struct("<BB6xQQQQQQ")
RESPONSE_TYPES = (MessageType.APPEND_RESPONSE, MessageType.HEARTBEAT_RESPONSE, MessageType.SNAPSHOT_RESPONSE)

# How often a sleeping worker wakes to check on its parent and report totals.
POLL_S = 0.2
POLL_MS = int(POLL_S * 1000)
# While reports wait for room in the status ring, the worker looks again this soon.
STATUS_RETRY_MS = 2
# A send that cannot make progress this long means the follower is stuck (paused, or its
# receive window closed); the link is dropped and redialled rather than blocking the worker.
SEND_TIMEOUT_S = 5.0
SEND_TIMEOUT_MS = int(SEND_TIMEOUT_S * 1000)
DIAL_TIMEOUT_S = 1.0
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
# Bytes of frames one cycle sends before it looks at the follower's answers again.
CYCLE_SEND_BYTES = 4 << 20
# Entries one merged AppendEntries may carry (each entry is already a batch of events).
APPEND_ENTRIES_MAX = 256
# Bytes read from the follower per recv, and the largest answer frame accepted.
RECV_BYTES = 1 << 16
ANSWER_FRAME_BYTES_MAX = 1 << 20
# Answers held while the status ring is full; past this the socket is not read (the follower's
# own send buffer then holds them).
PENDING_RESPONSES_MAX = 4096


def response_record(m: Message) -> bytes:
    return RESPONSE_LAYOUT.pack(m.type, m.reject, m.term, m.index, m.log_term, m.hint_index, m.read_seq, m.offset)


def response_message(payload: bytes, to: int, sender: int) -> Message:
    """The Message a RESPONSE status record stands for (the node side of response_record)."""
    mtype, reject, term, index, log_term, hint_index, read_seq, offset = RESPONSE_LAYOUT.unpack(payload)
    return Message(MessageType(mtype), to, sender, term, index=index, log_term=log_term, reject=bool(reject),
                   hint_index=hint_index, read_seq=read_seq, offset=offset)


class WakeCounters:
    """How a worker slept and woke, and how long APPEND orders waited for it.

    A missed wake-up is a sleep that ran to its timeout (POLL_S) while orders waited in the
    control ring: the eventcount in csrc/spsc_ring.h is meant to make that impossible, so any
    count here is a bug (or an order published in the instant the timeout fired).
    """

    __slots__ = ("sleeps", "doorbell_wakes", "missed_wakeups", "order_wait_ns", "order_wait_buckets")

    def __init__(self, sleeps: int = 0, doorbell_wakes: int = 0, missed_wakeups: int = 0, order_wait_ns: int = 0,
                 order_wait_buckets: list[int] | None = None) -> None:
        self.sleeps = sleeps
        self.doorbell_wakes = doorbell_wakes
        self.missed_wakeups = missed_wakeups
        self.order_wait_ns = order_wait_ns
        # Invariant: len == len(ORDER_WAIT_BOUNDS_S) + 1; the last bucket is "longer than all".
        self.order_wait_buckets = order_wait_buckets or [0] * (len(ORDER_WAIT_BOUNDS_S) + 1)

    def observe_order_wait(self, wait_ns: int) -> None:
        wait_ns = max(0, wait_ns)
        self.order_wait_ns += wait_ns
        self.order_wait_buckets[bisect.bisect_left(_ORDER_WAIT_BOUNDS_NS, wait_ns)] += 1

    @property
    def orders_timed(self) -> int:
        return sum(self.order_wait_buckets)

    def order_wait_quantile_s(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (inf past the last bound; 0 with no orders)."""
        total = self.orders_timed
        if not total:
            return 0.0
        rank = q * total
        seen = 0
        for bound, n in zip((*ORDER_WAIT_BOUNDS_S, float("inf")), self.order_wait_buckets):
            seen += n
            if seen >= rank:
                return bound
        return float("inf")

    def fields(self) -> tuple[int, ...]:
        return (self.sleeps, self.doorbell_wakes, self.missed_wakeups, self.order_wait_ns, *self.order_wait_buckets)

    @classmethod
    def from_fields(cls, fields: tuple[int, ...]) -> WakeCounters:
        sleeps, doorbell_wakes, missed, wait_ns, *buckets = fields
        return cls(sleeps, doorbell_wakes, missed, wait_ns, list(buckets))


class _Append:
    """One AppendEntries being assembled from one or more consecutive orders."""

    __slots__ = ("term", "prev_index", "prev_term", "commit", "lo", "hi", "pos", "end", "data_bytes")

    def __init__(self, fields: tuple[int, ...]) -> None:
        (self.term, self.prev_index, self.prev_term, self.commit, self.lo, self.hi, self.pos, self.end,
         self.data_bytes, _published_ns) = fields

    def maybe_extend(self, o: tuple[int, ...], capacity: int, bytes_max: int) -> bool:
        term, prev_index, _prev_term, commit, lo, hi, pos, end, data_bytes, _published_ns = o
        # The next record follows this one's end, or starts the next lap after a wrap marker.
        follows = pos == self.end or (pos % capacity == 0 and 0 < pos - self.end < capacity)
        if (term != self.term or prev_index != self.hi or lo != self.hi + 1 or not follows
                or hi - self.lo + 1 > APPEND_ENTRIES_MAX or self.data_bytes + data_bytes > bytes_max):
            return False
        self.hi, self.commit, self.end = hi, commit, end
        self.data_bytes += data_bytes
        return True


class ReplicationWorker:
    def __init__(self, node_id: int, peer_id: int, address: tuple[str, int], local_host: str | None,
                 entries: EntryRing, control: SpscRing, status: SpscRing, doorbell_fd: int, node_bell_fd: int,
                 append_bytes_max: int) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        self.address = address
        self.local_host = local_host
        self.entries = entries
        self.control = control
        self.status = status
        self.doorbell_fd = doorbell_fd
        self.node_bell_fd = node_bell_fd
        self.append_bytes_max = append_bytes_max
        self.sock: socket.socket | None = None
        self.stream = AppendStream(-1, SEND_TIMEOUT_MS)
        self._carry: tuple[int, bytes] | None = None
        self._decoder = FrameDecoder(crc32c, ANSWER_FRAME_BYTES_MAX)
        self._responses: list[bytes] = []
        self.messages = 0
        self.dropped = 0
        self.stale = 0
        self.wake = WakeCounters()
        self._dropped_unreported = 0
        self._stale_unreported: list[int] = []
        self._connected_unreported = False
        self._backoff = BACKOFF_INITIAL_S
        self._next_dial = 0.0
        self._next_stats = 0.0

    def run(self) -> None:
        parent = os.getppid()
        # One poll per cycle covers the doorbell and the follower's answers: no syscall is made
        # to find that there is nothing to read.
        poller = select.poll()
        poller.register(self.doorbell_fd, select.POLLIN)
        watched: tuple[int, int] | None = None  # (socket fd, events) registered in poller
        cycles = 0
        while True:
            cycles += 1
            # getppid is a system call: ask when idle (below) and every few thousand cycles.
            if cycles % 4096 == 0 and os.getppid() != parent:
                return
            now = time.monotonic()
            if self.sock is None and now >= self._next_dial:
                self._dial(now)
            if now >= self._next_stats:
                self._report_stats()
                self._next_stats = now + POLL_S
            # While answers wait for room in the status ring, the socket is not read.
            want = (self.sock.fileno(), select.POLLIN if len(self._responses) < PENDING_RESPONSES_MAX else 0) \
                if self.sock is not None else None
            if want != watched:
                if watched is not None and (want is None or want[0] != watched[0]):
                    poller.unregister(watched[0])
                    watched = None
                if want is not None:
                    if watched is None:
                        poller.register(*want)
                    else:
                        poller.modify(*want)
                watched = want
            self._flush_status()
            timeout_ms = 0
            if self._carry is None and self.control.used == 0:
                if self._responses or self._stale_unreported:
                    timeout_ms = STATUS_RETRY_MS
                elif self.control.prepare_wait():
                    timeout_ms = POLL_MS
            events = poller.poll(timeout_ms)
            if timeout_ms == POLL_MS:
                self.wake.sleeps += 1
                if not events and self.control.used:
                    self.wake.missed_wakeups += 1
            if not events and timeout_ms and os.getppid() != parent:
                return
            for fd, _events in events:
                if fd == self.doorbell_fd:
                    if timeout_ms == POLL_MS:
                        self.wake.doorbell_wakes += 1
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.doorbell_fd, 4096)
                elif self.sock is not None and fd == self.sock.fileno():
                    self._read_answers()
            self._carry_out_orders()

    # -- one cycle ----------------------------------------------------------------------------
    def _read_answers(self) -> None:
        """Take what the follower sent back (poll said there is some) and queue it as status
        records."""
        sock = self.sock
        assert sock is not None
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(f"receive failed: {exc}")
            return
        if not data:
            self._lost("follower closed the replication link")
            return
        try:
            bodies = self._decoder.feed(data)
        except FrameError as exc:
            self._lost(f"bad frame from the follower: {exc}")
            return
        for body in bodies:
            self._queue_answer(body)
        self._flush_status()

    def _queue_answer(self, body: bytes) -> None:
        try:
            m = decode_message(body)
        except PeerCodecError as exc:
            print(f"replication worker {self.node_id}->{self.peer_id}: dropping a malformed answer: {exc}",
                  file=sys.stderr, flush=True)
            return
        if m.type not in RESPONSE_TYPES or m.sender != self.peer_id or m.to != self.node_id:
            print(f"replication worker {self.node_id}->{self.peer_id}: dropping an unexpected {m.type.name} "
                  f"from {m.sender} to {m.to}", file=sys.stderr, flush=True)
            return
        record = response_record(m)
        pending = self._responses
        if pending and m.type == MessageType.APPEND_RESPONSE and not m.reject:
            # A success supersedes the success just before it at the same term: the core only
            # needs the highest index matched (its window frees through it).
            last = RESPONSE_LAYOUT.unpack(pending[-1])
            if last[0] == MessageType.APPEND_RESPONSE and not last[1] and last[2] == m.term and last[3] <= m.index:
                pending[-1] = record
                return
        pending.append(record)

    def _carry_out_orders(self) -> None:
        if self.sock is None:
            self._discard_orders()
            return
        try:
            self._send_orders()
        except OSError as exc:
            self._lost(f"send failed: {exc}")

    def _send_orders(self) -> None:
        stream = self.stream
        capacity = self.entries.capacity
        queued = 0
        while queued < CYCLE_SEND_BYTES:
            record = self._carry if self._carry is not None else self.control.read()
            self._carry = None
            if record is None:
                break
            kind, payload = record
            if kind == ORDER_MESSAGE:
                stream.queue_message(payload)
                queued += 8 + len(payload)
                self.messages += 1
                continue
            if kind != ORDER_APPEND or len(payload) != APPEND_ORDER.size:
                print(f"replication worker {self.node_id}->{self.peer_id}: unknown order {kind}; dropped",
                      file=sys.stderr, flush=True)
                continue
            fields = APPEND_ORDER.unpack(payload)
            # Both ends read CLOCK_MONOTONIC, one clock for the whole machine.
            self.wake.observe_order_wait(time.monotonic_ns() - fields[-1])
            append = _Append(fields)
            while True:
                following = self.control.read()
                if following is None:
                    break
                if not (following[0] == ORDER_APPEND and len(following[1]) == APPEND_ORDER.size):
                    self._carry = following
                    break
                fields = APPEND_ORDER.unpack(following[1])
                if not append.maybe_extend(fields, capacity, self.append_bytes_max):
                    self._carry = following
                    break
                self.wake.observe_order_wait(time.monotonic_ns() - fields[-1])
            n = stream.queue_append(self.entries, self.peer_id, self.node_id, append.term, append.prev_index,
                                    append.prev_term, append.commit, append.pos, append.lo, append.hi)
            if n == SEND_TOO_MANY:
                n = self._queue_copied(append)
            if n < 0:
                # Overwritten (or never there): not sent; the node re-probes from the log.
                self.stale += 1
                self._stale_unreported.append(append.lo)
                if n == SEND_LAPPED:
                    self._lost(f"entries from {append.lo} were overwritten while being sent; frame left unfinished")
                    return
                continue
            queued += n
            self.messages += 1
        stream.flush()

    def _queue_copied(self, append: _Append) -> int:
        """An order of more entries than one gather list takes (a follower catching up): its
        frame is copied out of the ring, checked, and sent from the copy."""
        out = bytearray(APPEND_OVERHEAD_BYTES + 12 * (append.hi - append.lo + 1) + append.data_bytes)
        n: int = self.entries.encode_append(out, 0, self.peer_id, self.node_id, append.term, append.prev_index,
                                            append.prev_term, append.commit, append.pos, append.lo, append.hi)
        if n > 0:
            self.stream.queue_frame(memoryview(out)[:n])
        return n

    def _discard_orders(self) -> None:
        count = 1 if self._carry is not None else 0
        self._carry = None
        while self.control.read() is not None:
            count += 1
        self.dropped += count
        self._dropped_unreported += count

    # -- the link -----------------------------------------------------------------------------
    def _dial(self, now: float) -> None:
        try:
            sock = socket.create_connection(
                self.address, timeout=DIAL_TIMEOUT_S,
                source_address=(self.local_host, 0) if self.local_host else None,
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(SEND_TIMEOUT_S)
            hello = Hello(ROLE_REPLICATION, self.node_id, self.peer_id).encode()
            sock.sendall(frame_header(len(hello), crc32c(hello)) + hello)
            # From here on: answers are read without waiting, frames written by the stream.
            sock.setblocking(False)
        except OSError:
            self._next_dial = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            return
        self.sock = sock
        self.stream.reset(sock.fileno())
        self._decoder = FrameDecoder(crc32c, ANSWER_FRAME_BYTES_MAX)
        self._backoff = BACKOFF_INITIAL_S
        self._connected_unreported = True

    def _lost(self, reason: str) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._next_dial = time.monotonic() + self._backoff
        print(f"replication worker {self.node_id}->{self.peer_id}: {reason}", file=sys.stderr, flush=True)

    # -- reports to the node ------------------------------------------------------------------
    def _flush_status(self) -> None:
        status = self.status
        wrote = False
        if self._connected_unreported and status.write(STATUS_CONNECTED, b""):
            self._connected_unreported = False
            wrote = True
        if self._dropped_unreported and status.write(STATUS_UNREACHABLE, COUNT_LAYOUT.pack(self._dropped_unreported)):
            self._dropped_unreported = 0
            wrote = True
        while self._stale_unreported and status.write(STATUS_STALE, COUNT_LAYOUT.pack(self._stale_unreported[0])):
            del self._stale_unreported[0]
            wrote = True
        sent = 0
        for record in self._responses:
            if not status.write(STATUS_RESPONSE, record):
                break
            sent += 1
        if sent:
            del self._responses[:sent]
            wrote = True
        if wrote and status.wake_needed():
            try:
                os.write(self.node_bell_fd, b"\x01")
            except BlockingIOError:
                pass  # the pipe already holds unread rings: the node will wake
            except OSError:
                pass  # the pool stopped (read end closed): this worker is being stopped too

    def _report_stats(self) -> None:
        # Totals, not deltas: a report that finds the ring full is simply superseded by the next.
        self.status.write(STATUS_STATS, STATS_LAYOUT.pack(self.messages, self.stream.bytes_sent, self.stream.sends,
                                                          self.dropped,
                                                          *self.wake.fields()))


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eventstream.replication.worker")
    p.add_argument("--node-id", type=int, required=True)
    p.add_argument("--peer-id", type=int, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--local-host", default=None)
    p.add_argument("--entries-fd", type=int, required=True)
    p.add_argument("--entries-bytes", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--control-bytes", type=int, required=True)
    p.add_argument("--status-fd", type=int, required=True)
    p.add_argument("--status-bytes", type=int, required=True)
    p.add_argument("--doorbell-fd", type=int, required=True)
    p.add_argument("--node-bell-fd", type=int, required=True)
    p.add_argument("--append-bytes-max", type=int, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    # The node handles Ctrl-C for the whole process group and stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    entries_map = mmap.mmap(args.entries_fd, args.entries_bytes)
    control_map = mmap.mmap(args.control_fd, args.control_bytes)
    status_map = mmap.mmap(args.status_fd, args.status_bytes)
    worker = ReplicationWorker(
        args.node_id, args.peer_id, (args.host, args.port), args.local_host,
        EntryRing.attach(entries_map), SpscRing.attach(control_map), SpscRing.attach(status_map),
        args.doorbell_fd, args.node_bell_fd, args.append_bytes_max,
    )
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
