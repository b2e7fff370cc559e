"""Peer links over real loopback sockets."""

import asyncio
import socket
import zlib

import pytest

from eventstream.transport.connection import FramedConnection
from eventstream.transport.frames import HEADER
from eventstream.transport.hello import ROLE_CLIENT, ROLE_PEER, Hello
from eventstream.transport.listener import Listener
from eventstream.transport.peers import Backoff, PeerNetwork

LIMIT = 1 << 20


def crc(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data)


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[int, bytes]] = []
        self.unreachable: list[int] = []
        self.event = asyncio.Event()

    def on_messages(self, peer_id: int, bodies: list[bytes]) -> None:
        self.got.extend((peer_id, b) for b in bodies)
        self.event.set()

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        async def loop() -> None:
            while len(self.got) < n:
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(loop(), timeout)


async def start_cluster(n: int) -> tuple[list[Listener], list[PeerNetwork], list[Inbox]]:
    listeners = [Listener(crc, LIMIT) for _ in range(n)]
    addrs = {}
    for i, lst in enumerate(listeners, start=1):
        addrs[i] = await lst.start("127.0.0.1", 0)
    nets, inboxes = [], []
    for i, lst in enumerate(listeners, start=1):
        inbox = Inbox()
        net = PeerNetwork(
            i,
            {p: a for p, a in addrs.items() if p != i},
            crc,
            LIMIT,
            inbox.on_messages,
            inbox.unreachable.append,
            backoff=Backoff(0.01, 0.1),
        )
        lst.set_owner(ROLE_PEER, net)
        net.start()
        nets.append(net)
        inboxes.append(inbox)
    for net in nets:
        for peer in net.peers:
            await asyncio.wait_for(net.wait_connected(peer), 5)
    return listeners, nets, inboxes


async def stop_cluster(listeners: list[Listener], nets: list[PeerNetwork]) -> None:
    for net in nets:
        await net.stop()
    for lst in listeners:
        await lst.stop()


def test_three_nodes_exchange_messages_in_order_over_one_connection_per_pair() -> None:
    async def main() -> None:
        listeners, nets, inboxes = await start_cluster(3)
        try:
            for net in nets:
                for peer in net.peers:
                    net.send(peer, [f"{net.node_id}->{peer}#{k}".encode() for k in range(50)])
            for inbox in inboxes:
                await inbox.wait_for(100)
            for me, inbox in enumerate(inboxes, start=1):
                for sender in (p for p in (1, 2, 3) if p != me):
                    bodies = [b for s, b in inbox.got if s == sender]
                    assert bodies == [f"{sender}->{me}#{k}".encode() for k in range(50)]
            # Lower id dials: node 1 has two outbound links, node 3 none, and each pair one link.
            assert sum(s.connects for s in nets[0].stats.values()) == 2
        finally:
            await stop_cluster(listeners, nets)

    asyncio.run(main())


def test_dialler_reconnects_after_the_link_breaks() -> None:
    async def main() -> None:
        listeners, nets, inboxes = await start_cluster(2)
        try:
            # Break the link from the accepting side; node 1 must redial.
            nets[1]._conns[1].abort("test cut")
            await asyncio.sleep(0.05)
            await asyncio.wait_for(nets[0].wait_connected(2), 5)
            await asyncio.wait_for(nets[1].wait_connected(1), 5)
            for _ in range(100):
                if nets[0].is_connected(2) and nets[1].is_connected(1):
                    break
                await asyncio.sleep(0.02)
            nets[0].send(2, [b"after reconnect"])
            await inboxes[1].wait_for(1)
            assert inboxes[1].got == [(1, b"after reconnect")]
            assert nets[0].stats[2].connects >= 2
        finally:
            await stop_cluster(listeners, nets)

    asyncio.run(main())


def test_messages_to_an_unconnected_or_blocked_peer_are_dropped_and_counted() -> None:
    async def main() -> None:
        listeners, nets, inboxes = await start_cluster(2)
        try:
            nets[0].blocked.add(2)
            nets[0].send(2, [b"lost"])
            assert nets[0].stats[2].dropped_blocked == 1
            nets[0].blocked.clear()
            await nets[1].stop()
            await listeners[1].stop()
            await asyncio.sleep(0.05)
            nets[0].send(2, [b"nobody home"])
            assert nets[0].stats[2].dropped_unconnected == 1
            assert inboxes[0].unreachable == [2]
        finally:
            await nets[0].stop()
            await listeners[0].stop()

    asyncio.run(main())


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 3,  # truncated header
        HEADER.pack(0xFFFFFFF0, 0),  # huge length prefix
        b"GET / HTTP/1.1\r\n\r\n",  # a stranger
        HEADER.pack(4, zlib.crc32(b"ESC\x01")) + b"ESC\x01",  # a hello of the wrong size
    ],
)
def test_bad_bytes_close_that_connection_and_the_node_keeps_serving(garbage: bytes) -> None:
    async def main() -> None:
        listeners, nets, inboxes = await start_cluster(2)
        try:
            host, port = nets[0].peers[2]
            loop = asyncio.get_running_loop()
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.setblocking(False)
                await loop.sock_sendall(sock, garbage)
                sock.shutdown(socket.SHUT_WR)
                # The node closes (or, for a truncated header, sees EOF and closes): we read EOF.
                data = await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
                assert data == b""
            nets[0].send(2, [b"still alive"])
            await inboxes[1].wait_for(1)
            assert inboxes[1].got == [(1, b"still alive")]
        finally:
            await stop_cluster(listeners, nets)

    asyncio.run(main())


def test_peer_that_dialled_the_wrong_node_is_refused() -> None:
    async def main() -> None:
        listeners, nets, _ = await start_cluster(2)
        try:
            host, port = nets[0].peers[2]
            loop = asyncio.get_running_loop()
            closed = loop.create_future()
            _, conn = await loop.create_connection(
                lambda: FramedConnection(crc, LIMIT, lambda c, b: None, lambda c, r: closed.set_result(r)),
                host,
                port,
            )
            conn.send(Hello(ROLE_PEER, sender_id=1, target_id=7).encode())
            await asyncio.wait_for(closed, 5)
            assert listeners[1].refused == 1
            # A client hello with no client server bound is refused too, not left hanging.
            closed2 = loop.create_future()
            _, conn2 = await loop.create_connection(
                lambda: FramedConnection(crc, LIMIT, lambda c, b: None, lambda c, r: closed2.set_result(r)),
                host,
                port,
            )
            conn2.send(Hello(ROLE_CLIENT).encode())
            await asyncio.wait_for(closed2, 5)
            assert listeners[1].refused == 2
        finally:
            await stop_cluster(listeners, nets)

    asyncio.run(main())


def test_a_membership_change_links_new_peers_and_drops_removed_ones() -> None:
    async def main() -> None:
        listeners, nets, inboxes = await start_cluster(2)
        newcomer_listener = Listener(crc, LIMIT)
        address = await newcomer_listener.start("127.0.0.1", 0)
        inbox3 = Inbox()
        net3 = PeerNetwork(3, dict(nets[0].peers | {1: nets[1].peers[1]}), crc, LIMIT, inbox3.on_messages,
                           backoff=Backoff(0.01, 0.1))
        newcomer_listener.set_owner(ROLE_PEER, net3)
        net3.start()
        try:
            for net in nets:
                net.set_peers({**net.peers, 3: address})
            for net in nets:
                await asyncio.wait_for(net.wait_connected(3), 5)
                net.send(3, [b"hello from %d" % net.node_id])
            await inbox3.wait_for(2)
            assert sorted(inbox3.got) == [(1, b"hello from 1"), (2, b"hello from 2")]

            nets[0].set_peers({2: nets[0].peers[2]})  # node 3 leaves node 1's membership
            await asyncio.sleep(0.3)  # several redial periods: none must happen
            assert 3 not in nets[0].peers and not nets[0].is_connected(3)
            nets[0].send(3, [b"gone"])
            assert nets[0].stats[3].dropped_unconnected == 1
            assert nets[0].stats[3].connects == 1
            nets[0].send(2, [b"still here"])
            await inboxes[1].wait_for(1)
        finally:
            await stop_cluster([*listeners, newcomer_listener], [*nets, net3])

    asyncio.run(main())
