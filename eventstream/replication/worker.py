"""A replication worker: the process that moves one follower's bytes for a leader in pool mode.

Started by eventstream/replication/pool.py as `python -m eventstream.replication.worker` with
inherited file descriptors: the shared entry ring (the leader's new log entries, each written
once for all followers), this follower's control ring (node -> worker orders), its status ring
(worker -> node reports), the read end of its doorbell pipe and the write end of the node's.

The worker owns one TCP link to its follower (hello role ROLE_REPLICATION); with --tls-dir it
is a TLS link, handshake and encryption done in C (csrc/tls_link.h), presenting this node's
certificate and requiring the follower's to name the follower. The follower sends
its answers to the leader's replication messages back on this link (transport/peers.py), so
the worker reads them and relays each as a compact status record, which the node turns back
into the Message the core would have received in-process.

The cycle itself (poll, answers in, orders out, reports, sleep) runs in C without the GIL
(csrc/worker_cycle.h); this module dials the link, reports totals every POLL_S, watches its
parent, and says why a link was dropped or what it refused.

The worker never decides what to send (Progress stays in the core, docs/conventions.md §4). It carries
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
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time

from eventstream.node_log import configure_node_log
from eventstream.raft.messages import Message, MessageType
from eventstream.replication._spsc_ring import (
    RUN_LOST,
    RUN_ORPHANED,
    RUN_RING_CORRUPT,
    EntryRing,
    RingError,
    SpscRing,
    TlsClient,
    TlsLinkError,
    WorkerCycle,
)
from eventstream.replication.worker_stats import ORDER_WAIT_BOUNDS_S
from eventstream.storage._crc32c import crc32c
from eventstream.transport.frames import frame_header
from eventstream.transport.hello import ROLE_REPLICATION, Hello

log = logging.getLogger("eventstream.replication.worker")  # not __main__: it runs with -m

ORDER_MESSAGE = 1
ORDER_APPEND = 2
APPEND_ORDER = struct.Struct("<QQQQQQQQQQ")
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
DIAL_TIMEOUT_MS = int(DIAL_TIMEOUT_S * 1000)
# A link that keeps failing its TLS handshake for the same reason is logged this seldom.
TLS_FAILURE_LOG_S = 60.0
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
# Entries one merged AppendEntries may carry (each entry is already a batch of events).
APPEND_ENTRIES_MAX = 256
# The largest answer frame accepted from the follower.
ANSWER_FRAME_BYTES_MAX = 1 << 20


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


class ReplicationWorker:
    def __init__(self, node_id: int, peer_id: int, address: tuple[str, int], local_host: str | None,
                 entries: EntryRing, control: SpscRing, status: SpscRing, doorbell_fd: int, node_bell_fd: int,
                 append_bytes_max: int, tls: TlsClient | None = None) -> None:
        self.node_id = node_id
        self.tls = tls
        self._tls_failure: tuple[str, float] = ("", 0.0)
        self.peer_id = peer_id
        self.address = address
        self.local_host = local_host
        self.status = status
        self.sock: socket.socket | None = None
        self.cycle = WorkerCycle(node_id, peer_id, entries, control, status, doorbell_fd, node_bell_fd,
                                 append_bytes_max, APPEND_ENTRIES_MAX, ANSWER_FRAME_BYTES_MAX, SEND_TIMEOUT_MS,
                                 POLL_MS, STATUS_RETRY_MS, _ORDER_WAIT_BOUNDS_NS)
        self._refusals = (0, 0, 0)
        self._backoff = BACKOFF_INITIAL_S
        self._next_dial = 0.0
        self._next_stats = 0.0

    def run(self, parent: int | None = None) -> None:
        """Until the node stops or dies. parent is the node's pid: read at start instead, it
        would be init's already when the node was killed while this worker started."""
        parent = os.getppid() if parent is None else parent
        while True:
            now = time.monotonic()
            if self.sock is None and now >= self._next_dial:
                self._dial(now)
            if now >= self._next_stats:
                self._report_stats()
                self._next_stats = now + POLL_S
            deadline = self._next_stats if self.sock is not None else min(self._next_stats, self._next_dial)
            # time.monotonic is CLOCK_MONOTONIC, the clock the cycle reads.
            result = self.cycle.run(int(deadline * 1e9))
            self._report_refusals()
            if result == RUN_LOST:
                self._lost(self.cycle.lost_reason())
            elif result == RUN_RING_CORRUPT:
                raise RingError("control ring corrupt: a record head points outside the published bytes")
            elif result == RUN_ORPHANED:
                return
            # The cycle returns at least every POLL_S: often enough to notice an orphaned worker.
            if os.getppid() != parent:
                return

    def _report_refusals(self) -> None:
        refusals = self.cycle.refusals
        if refusals == self._refusals:
            return
        what = ("malformed answers", "unexpected answers (not a replication answer from the follower to this "
                "node)", "orders of an unknown kind")
        for name, before, now in zip(what, self._refusals, refusals):
            if now > before:
                log.warning("replication worker %d->%d: dropped %d %s", self.node_id, self.peer_id, now - before, name)
        self._refusals = refusals

    # -- the link -----------------------------------------------------------------------------
    def _dial(self, now: float) -> None:
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection(
                self.address, timeout=DIAL_TIMEOUT_S,
                source_address=(self.local_host, 0) if self.local_host else None,
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            hello = Hello(ROLE_REPLICATION, self.node_id, self.peer_id).encode()
            framed = frame_header(len(hello), crc32c(hello)) + hello
            if self.tls is not None:
                # The handshake, the follower's identity and the hello, in C: from here on the
                # cycle reads and writes the link through the session.
                sock.setblocking(False)
                self.cycle.link_tls(sock.fileno(), self.tls, self.peer_id, DIAL_TIMEOUT_MS, framed)
            else:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendall(framed)
                # From here on the cycle reads answers without waiting and writes frames with sendmsg.
                sock.setblocking(False)
                self.cycle.link(sock.fileno())
        except OSError as exc:  # TlsLinkError is one
            if isinstance(exc, TlsLinkError):
                self._tls_failed(str(exc), now)
            if sock is not None:
                sock.close()
            self._next_dial = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            return
        self.sock = sock
        self._backoff = BACKOFF_INITIAL_S

    def _tls_failed(self, reason: str, now: float) -> None:
        last, at = self._tls_failure
        if reason != last or now - at >= TLS_FAILURE_LOG_S:
            log.warning("replication worker %d->%d: TLS link to %s:%d refused: %s (logged once a minute)",
                        self.node_id, self.peer_id, *self.address, reason)
            self._tls_failure = (reason, now)

    def _lost(self, reason: str) -> None:
        """The cycle dropped the link (it is already marked down there): close the socket."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._next_dial = time.monotonic() + self._backoff
        # A peer restarting or cut off: the worker redials with backoff, as the node's links do.
        log.info("replication worker %d->%d: %s", self.node_id, self.peer_id, reason)

    def _report_stats(self) -> None:
        # Totals, not deltas: a report that finds the ring full is simply superseded by the next.
        self.status.write(STATUS_STATS, STATS_LAYOUT.pack(*self.cycle.totals()))


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
    p.add_argument("--log-level", default="info")
    p.add_argument("--parent-pid", type=int, default=None)
    p.add_argument("--tls-dir", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    configure_node_log(args.log_level, args.node_id)
    # The node handles Ctrl-C for the whole process group and stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    entries_map = mmap.mmap(args.entries_fd, args.entries_bytes)
    control_map = mmap.mmap(args.control_fd, args.control_bytes)
    status_map = mmap.mmap(args.status_fd, args.status_bytes)
    tls = None
    if args.tls_dir:
        from eventstream.tls import CA_FILE, node_files

        cert, key = node_files(args.tls_dir, args.node_id)
        tls = TlsClient(os.path.join(args.tls_dir, CA_FILE), str(cert), str(key))
    worker = ReplicationWorker(
        args.node_id, args.peer_id, (args.host, args.port), args.local_host,
        EntryRing.attach(entries_map), SpscRing.attach(control_map), SpscRing.attach(status_map),
        args.doorbell_fd, args.node_bell_fd, args.append_bytes_max, tls,
    )
    worker.run(args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
