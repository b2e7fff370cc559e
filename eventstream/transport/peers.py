"""Links between the nodes of one cluster: exactly one TCP connection per pair of nodes.

The node with the lower id dials, the higher one accepts, and both send over the one
connection. That rule gives one connection per pair without a tie-break protocol; a dialer
that loses its connection redials with capped, jittered exponential backoff.

Messages are opaque bodies here. Raft tolerates loss, so a message for a peer that is not
connected, or whose connection is congested, is dropped and counted rather than queued without
bound; the owner is told the peer is unreachable so the core can fall back to probing.

A leader in replication = "pool" mode also accepts nothing new here, but its followers accept a
second link per leader (hello role ROLE_REPLICATION) on which a pool worker sends that leader's
messages; frames from it go to on_messages like frames from the pair's own link. The
follower's answers to replication (peer_codec.REPLICATION_ANSWER_TYPES) go back on that link
while it is open, so the worker relays them to its leader's core; everything else, and every
answer when there is no such link, goes over the pair's link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from eventstream.transport.connection import WRITE_BUFFER_HIGH_BYTES, FramedConnection
from eventstream.transport.frames import CrcFunction, FrameError
from eventstream.transport.hello import ROLE_PEER, ROLE_REPLICATION, Hello
from eventstream.transport.listener import RefusalLog
from eventstream.transport.peer_codec import is_replication_answer

log = logging.getLogger(__name__)




@dataclass(slots=True)
class PeerStats:
    connects: int = 0
    disconnects: int = 0
    messages_out: int = 0
    messages_in: int = 0
    dropped_unconnected: int = 0
    dropped_congested: int = 0
    dropped_blocked: int = 0


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float = 0.05
    max_s: float = 1.0
    multiplier: float = 2.0


class PeerNetwork:
    """Owns the connections to every other node of the cluster.

    on_messages(peer_id, bodies) receives every batch of message bodies a peer sent, in order.
    on_unreachable(peer_id) is called when a message to the peer had to be dropped.
    on_connected(peer_id) is called each time a link to the peer is (re)established.
    """

    def __init__(
        self,
        node_id: int,
        peers: dict[int, tuple[str, int]],
        crc: CrcFunction,
        frame_bytes_max: int,
        on_messages: Callable[[int, list[bytes]], None],
        on_unreachable: Callable[[int], None] | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        local_host: str | None = None,
        on_connected: Callable[[int], None] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if node_id in peers:
            raise ValueError(f"peer map must not contain this node's own id {node_id}")
        self.node_id = node_id
        self.peers = dict(peers)
        self._crc = crc
        self._frame_bytes_max = frame_bytes_max
        self._on_messages = on_messages
        self._on_unreachable = on_unreachable
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        # Dial from this node's own address, so a link between two nodes is identified by their
        # two addresses (a partition test cuts it with one firewall rule per direction).
        self._local_host = local_host
        self._on_connected = on_connected
        # With TLS, a peer link carries a certificate of the cluster's CA naming the node at the
        # other end (eventstream/tls.py): it must be the node the hello names.
        self._tls = tls
        self._conns: dict[int, FramedConnection] = {}
        self._replication_conns: dict[int, FramedConnection] = {}
        self._dialers: dict[int, asyncio.Task[None]] = {}
        self._connected_events: dict[int, asyncio.Event] = {}
        # Fault hook for tests: messages to and from these peers vanish, as on a cut link.
        self.blocked: set[int] = set()
        self.stats: dict[int, PeerStats] = {pid: PeerStats() for pid in peers}
        self._stopping = False
        self._started = False
        self.refusals = RefusalLog()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        for peer_id in self.peers:
            self._connected_events.setdefault(peer_id, asyncio.Event())
            self._start_dialer(peer_id)

    def _start_dialer(self, peer_id: int) -> None:
        if peer_id > self.node_id and peer_id not in self._dialers:
            self._dialers[peer_id] = asyncio.get_running_loop().create_task(
                self._dial_forever(peer_id), name=f"dial-peer-{peer_id}"
            )

    def set_peers(self, peers: dict[int, tuple[str, int]]) -> None:
        """Follow a membership change: link to the new members, close the links of the removed
        ones (and stop redialling them), and redial a member whose address changed. Stats of
        removed peers are kept, so what was dropped on the way out stays counted."""
        wanted = {pid: address for pid, address in peers.items() if pid != self.node_id}
        for peer_id, address in list(self.peers.items()):
            if wanted.get(peer_id) != address:
                self._forget(peer_id)
        for peer_id, address in wanted.items():
            if peer_id in self.peers:
                continue
            self.peers[peer_id] = address
            self.stats.setdefault(peer_id, PeerStats())
            self._connected_events.setdefault(peer_id, asyncio.Event())
            if self._started:
                self._start_dialer(peer_id)

    def _forget(self, peer_id: int) -> None:
        del self.peers[peer_id]
        task = self._dialers.pop(peer_id, None)
        if task is not None:
            task.cancel()
        for conns in (self._conns, self._replication_conns):
            conn = conns.pop(peer_id, None)
            if conn is not None:
                conn.close("peer left the membership")
        event = self._connected_events.get(peer_id)
        if event is not None:
            event.clear()

    async def stop(self) -> None:
        self._stopping = True
        for task in self._dialers.values():
            task.cancel()
        for task in self._dialers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for conn in [*self._conns.values(), *self._replication_conns.values()]:
            conn.close("node stopping")
        self._conns.clear()
        self._replication_conns.clear()

    def is_connected(self, peer_id: int) -> bool:
        conn = self._conns.get(peer_id)
        return conn is not None and not conn.closed

    async def wait_connected(self, peer_id: int) -> None:
        await self._connected_events[peer_id].wait()

    # -- sending ----------------------------------------------------------------------------
    def send(self, peer_id: int, bodies: list[bytes] | list[bytes | memoryview]) -> None:
        """Send message bodies to one peer with a single write, or drop them all."""
        stats = self.stats[peer_id]
        if peer_id in self.blocked:
            stats.dropped_blocked += len(bodies)
            return
        worker_link = self._replication_conns.get(peer_id)
        if worker_link is not None and not worker_link.closed:
            answers = [b for b in bodies if is_replication_answer(b)]
            if answers:
                bodies = [b for b in bodies if not is_replication_answer(b)]
                self._send_on(peer_id, worker_link, answers)
                if not bodies:
                    return
        self._send_on(peer_id, self._conns.get(peer_id), bodies)

    def _send_on(self, peer_id: int, conn: FramedConnection | None, bodies: list[bytes] | list[bytes | memoryview]) -> None:
        stats = self.stats[peer_id]
        if conn is None or conn.closed:
            stats.dropped_unconnected += len(bodies)
            self._report_unreachable(peer_id)
            return
        if conn.write_buffer_bytes > WRITE_BUFFER_HIGH_BYTES:
            stats.dropped_congested += len(bodies)
            self._report_unreachable(peer_id)
            return
        try:
            sent = conn.send_many(bodies)
        except FrameError:
            log.exception("message to peer %d exceeds the frame limit; dropped", peer_id)
            stats.dropped_congested += len(bodies)
            return
        if sent:
            stats.messages_out += len(bodies)
        else:
            stats.dropped_unconnected += len(bodies)
            self._report_unreachable(peer_id)

    def _report_unreachable(self, peer_id: int) -> None:
        if self._on_unreachable is not None:
            self._on_unreachable(peer_id)

    # -- receiving --------------------------------------------------------------------------
    def adopt(self, conn: FramedConnection, hello: Hello) -> bool:
        """Take over an accepted connection whose hello says it is a peer (or a leader's
        replication worker). False = refused; refusals are logged once a minute per host
        (a removed member, or one not added yet, redials at every backoff step)."""
        refusal = self._refusal(conn, hello)
        if refusal is not None:
            self.refusals.note(conn.peername, refusal)
            return False
        if hello.role == ROLE_REPLICATION:
            self._adopt_replication(hello.sender_id, conn)
            return True
        conn.rebind(self._on_frames, self._on_conn_closed)
        self._install(hello.sender_id, conn)
        return True

    def _refusal(self, conn: FramedConnection, hello: Hello) -> str | None:
        peer_id = hello.sender_id
        what = "replication link" if hello.role == ROLE_REPLICATION else "peer"
        if hello.role not in (ROLE_PEER, ROLE_REPLICATION) or peer_id not in self.peers:
            return f"{what} hello from node {peer_id}, which is not a member this node links with"
        if hello.target_id != self.node_id:
            return f"{what} {peer_id} dialled node {hello.target_id} but this is node {self.node_id}"
        # Over TLS a replication link is held to the same proof as a peer link: it carries the
        # leader's appends.
        if self._tls is not None and conn.certified_node != peer_id:
            named = f"node {conn.certified_node}" if conn.certified_node is not None else "no node"
            return f"{what} {peer_id}: its certificate names {named}"
        if hello.role == ROLE_PEER and peer_id > self.node_id:
            return f"peer {peer_id}: the lower id dials, and {peer_id} > {self.node_id}"
        return None

    def _adopt_replication(self, peer_id: int, conn: FramedConnection) -> None:
        # Either side may hold this link (it is the leader's, whatever the ids), and a restarted
        # worker's link replaces the dead one's.
        old = self._replication_conns.get(peer_id)
        if old is not None and not old.closed:
            old.close("replaced by a newer replication link from the same peer")
        conn.tag = peer_id
        conn.rebind(self._on_frames, self._on_replication_closed)
        self._replication_conns[peer_id] = conn

    def _on_replication_closed(self, conn: FramedConnection, reason: str) -> None:
        peer_id = conn.tag
        if isinstance(peer_id, int) and self._replication_conns.get(peer_id) is conn:
            del self._replication_conns[peer_id]

    def _install(self, peer_id: int, conn: FramedConnection) -> None:
        old = self._conns.get(peer_id)
        if old is not None and old is not conn:
            old.close("replaced by a newer connection from the same peer")
        conn.tag = peer_id
        self._conns[peer_id] = conn
        self.stats[peer_id].connects += 1
        self._connected_events[peer_id].set()
        if self._on_connected is not None:
            self._on_connected(peer_id)

    def _on_frames(self, conn: FramedConnection, bodies: list[bytes]) -> None:
        peer_id = conn.tag
        assert isinstance(peer_id, int)
        if peer_id in self.blocked:
            self.stats[peer_id].dropped_blocked += len(bodies)
            return
        self.stats[peer_id].messages_in += len(bodies)
        self._on_messages(peer_id, bodies)

    def _on_conn_closed(self, conn: FramedConnection, reason: str) -> None:
        peer_id = conn.tag
        if isinstance(peer_id, int) and self._conns.get(peer_id) is conn:
            del self._conns[peer_id]
            self.stats[peer_id].disconnects += 1
            self._connected_events[peer_id].clear()
            if not self._stopping:
                log.info("link to peer %d closed: %s", peer_id, reason)

    # -- dialling ---------------------------------------------------------------------------
    async def _dial_forever(self, peer_id: int) -> None:
        host, port = self.peers[peer_id]
        loop = asyncio.get_running_loop()
        delay = self._backoff.initial_s
        while not self._stopping:
            closed = loop.create_future()

            def on_close(conn: FramedConnection, reason: str, closed: asyncio.Future[str] = closed) -> None:
                self._on_conn_closed(conn, reason)
                if not closed.done():
                    closed.set_result(reason)

            try:
                _, conn = await loop.create_connection(
                    lambda: FramedConnection(self._crc, self._frame_bytes_max, self._on_frames, on_close),
                    host,
                    port,
                    local_addr=(self._local_host, 0) if self._local_host else None,
                    ssl=self._tls, server_hostname="" if self._tls is not None else None,
                )
            except (OSError, ssl.SSLError) as exc:
                log.debug("dial peer %d at %s:%d failed: %s", peer_id, host, port, exc)
            else:
                if self._tls is not None and conn.certified_node != peer_id:
                    log.warning("peer %d at %s:%d presents a certificate for %s; not linking", peer_id, host, port,
                                f"node {conn.certified_node}" if conn.certified_node is not None else "no node")
                    conn.close("certificate names another node")
                    await asyncio.sleep(self._backoff.max_s)
                    continue
                conn.send(Hello(ROLE_PEER, self.node_id, peer_id).encode())
                self._install(peer_id, conn)
                delay = self._backoff.initial_s
                await closed
            if self._stopping:
                return
            # Jitter spreads the redials of several nodes that lost a peer at the same moment.
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * self._backoff.multiplier, self._backoff.max_s)
