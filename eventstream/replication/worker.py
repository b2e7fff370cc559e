"""A replication worker: the process that moves one follower's bytes for a leader in pool mode.

Started by eventstream/replication/pool.py as `python -m eventstream.replication.worker` with
three inherited file descriptors: the shared memory of the data ring (node -> worker: encoded
Raft messages, one record each), the shared memory of the status ring (worker -> node: compact
records below), and the read end of a doorbell pipe the node writes to when the worker sleeps.

The worker owns one TCP link to its follower (hello role ROLE_REPLICATION). It never decides what
to send: it frames each record the core produced (length + CRC-32C, in native code) and writes
up to 64 ready records with one gather write straight from the shared memory. When the link is down it discards what arrives, tells the
node (UNREACHABLE), redials with capped backoff, and says CONNECTED once back: the node then
re-probes the follower (raft report_reconnected), so whatever was discarded is resent from the
log. The worker exits when its parent is gone, so a SIGKILLed node leaves no workers behind.

Status records (kind, then little-endian u64 fields):
    CONNECTED    (1)  link (re)established
    UNREACHABLE  (2)  dropped records since the last report
    STATS        (3)  messages, bytes, sends, dropped (totals since the worker started)
"""

from __future__ import annotations

import argparse
import mmap
import os
import select
import signal
import socket
import struct
import sys
import time

from eventstream._crc32c import crc32c
from eventstream._spsc_ring import SpscRing
from eventstream.transport.frames import frame_header
from eventstream.transport.hello import ROLE_REPLICATION, Hello

STATUS_CONNECTED = 1
STATUS_UNREACHABLE = 2
STATUS_STATS = 3
STATS_LAYOUT = struct.Struct("<QQQQ")
DROPPED_LAYOUT = struct.Struct("<Q")

# How often a sleeping worker wakes to check on its parent and report totals.
POLL_S = 0.2
# A send that cannot make progress this long means the follower is stuck (paused, or its
# receive window closed); the link is dropped and redialled rather than blocking the worker.
SEND_TIMEOUT_S = 5.0
SEND_TIMEOUT_MS = int(SEND_TIMEOUT_S * 1000)
DIAL_TIMEOUT_S = 1.0
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 1.0
# Scratch space for discarding records while the link is down; a larger record gets a buffer
# of its own, so a worker's memory does not grow with the largest message it ever saw.
OUT_BYTES = 1 << 20


class ReplicationWorker:
    def __init__(self, node_id: int, peer_id: int, address: tuple[str, int], local_host: str | None,
                 data: SpscRing, status: SpscRing, doorbell_fd: int) -> None:
        self.node_id = node_id
        self.peer_id = peer_id
        self.address = address
        self.local_host = local_host
        self.data = data
        self.status = status
        self.doorbell_fd = doorbell_fd
        self.sock: socket.socket | None = None
        self.out = bytearray(OUT_BYTES)
        self.messages = 0
        self.bytes = 0
        self.sends = 0
        self.dropped = 0
        self._dropped_unreported = 0
        self._connected_unreported = False
        self._backoff = BACKOFF_INITIAL_S
        self._next_dial = 0.0
        self._next_stats = 0.0

    def run(self) -> None:
        parent = os.getppid()
        while os.getppid() == parent:
            now = time.monotonic()
            if self.sock is None and now >= self._next_dial:
                self._dial(now)
            if now >= self._next_stats:
                self._report_stats()
                self._next_stats = now + POLL_S
            self._flush_status()
            if self.data.used == 0 and self.data.prepare_wait():
                self._sleep()
            self._move_records()

    # -- one cycle ----------------------------------------------------------------------------
    def _sleep(self) -> None:
        readable = [self.doorbell_fd]
        if self.sock is not None:
            readable.append(self.sock.fileno())
        ready, _, _ = select.select(readable, [], [], POLL_S)
        if self.doorbell_fd in ready:
            try:
                os.read(self.doorbell_fd, 4096)
            except BlockingIOError:
                pass
        if self.sock is not None and self.sock.fileno() in ready:
            # The follower never writes on this link: readable means closed (or reset).
            try:
                data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                data = b"?"
            except OSError:
                data = b""
            if not data:
                self._lost("follower closed the replication link")

    def _move_records(self) -> None:
        if self.sock is None:
            self._discard_records()
            return
        try:
            # Frames go from the shared ring to the socket with one gather write: no copy here.
            nbytes, records = self.data.send_frames(self.sock.fileno(), SEND_TIMEOUT_MS)
        except OSError as exc:
            # The records stay in the ring; with the link gone they are discarded and counted.
            self._lost(f"send failed: {exc}")
            return
        if records:
            self.messages += records
            self.bytes += nbytes
            self.sends += 1

    def _discard_records(self) -> None:
        nbytes, records = self.data.drain_frames(self.out)
        if not records:
            big = self.data.next_frame_bytes()
            if not big:
                return
            nbytes, records = self.data.drain_frames(bytearray(big))
        self.dropped += records
        self._dropped_unreported += records

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
        except OSError:
            self._next_dial = now + self._backoff
            self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
            return
        self.sock = sock
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
        if self._connected_unreported and self.status.write(STATUS_CONNECTED, b""):
            self._connected_unreported = False
        if self._dropped_unreported and self.status.write(STATUS_UNREACHABLE, DROPPED_LAYOUT.pack(self._dropped_unreported)):
            self._dropped_unreported = 0

    def _report_stats(self) -> None:
        # Totals, not deltas: a report that finds the ring full is simply superseded by the next.
        self.status.write(STATUS_STATS, STATS_LAYOUT.pack(self.messages, self.bytes, self.sends, self.dropped))


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eventstream.replication.worker")
    p.add_argument("--node-id", type=int, required=True)
    p.add_argument("--peer-id", type=int, required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--local-host", default=None)
    p.add_argument("--data-fd", type=int, required=True)
    p.add_argument("--data-bytes", type=int, required=True)
    p.add_argument("--status-fd", type=int, required=True)
    p.add_argument("--status-bytes", type=int, required=True)
    p.add_argument("--doorbell-fd", type=int, required=True)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    # The node handles Ctrl-C for the whole process group and stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    data_map = mmap.mmap(args.data_fd, args.data_bytes)
    status_map = mmap.mmap(args.status_fd, args.status_bytes)
    worker = ReplicationWorker(
        args.node_id, args.peer_id, (args.host, args.port), args.local_host,
        SpscRing.attach(data_map), SpscRing.attach(status_map), args.doorbell_fd,
    )
    worker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
