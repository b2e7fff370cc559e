"""The follower's side of a pool worker's link (hello role 3): accepted only from a known peer
that dialled this node, frames delivered as that peer's, a newer link replacing an older one,
and the follower's answers to replication sent back on it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from eventstream.raft.messages import Message, MessageType
from eventstream.storage._crc32c import crc32c
from eventstream.transport.frames import FrameDecoder, frame_header
from eventstream.transport.hello import ROLE_REPLICATION, Hello
from eventstream.transport.listener import Listener
from eventstream.transport.peer_codec import decode_message, encode_message
from eventstream.transport.peers import PeerNetwork

LIMIT = 1 << 20


def frame(body: bytes) -> bytes:
    return frame_header(len(body), crc32c(body)) + body


async def dial(address: tuple[str, int], sender: int, target: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(frame(Hello(ROLE_REPLICATION, sender, target).encode()))
    await writer.drain()
    return reader, writer


async def soon(predicate: Callable[[], object]) -> None:
    """Wait up to 2 s for predicate; the assertions after it say what was expected."""
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0.01)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return True


def test_replication_links_are_checked_delivered_replaced_and_blockable() -> None:
    async def main() -> None:
        got: list[tuple[int, bytes]] = []
        listener = Listener(crc32c, LIMIT)
        address = await listener.start("127.0.0.1", 0)
        net = PeerNetwork(2, {1: ("127.0.0.1", 1), 3: ("127.0.0.1", 1)}, crc32c, LIMIT,
                          lambda peer, bodies: got.extend((peer, b) for b in bodies))
        listener.set_owner(ROLE_REPLICATION, net)
        try:
            # A higher id may hold this link too: it is the leader's, whatever the ids.
            for sender in (1, 3):
                _, writer = await dial(address, sender, 2)
                writer.write(frame(b"from %d" % sender))
                await writer.drain()
            await soon(lambda: len(got) == 2)
            assert sorted(got) == [(1, b"from 1"), (3, b"from 3")]

            # A restarted worker's link replaces the old one, which is closed.
            old_reader, _ = await dial(address, 1, 2)
            await asyncio.sleep(0.05)
            _, new_writer = await dial(address, 1, 2)
            assert await closed_by_peer(old_reader)
            new_writer.write(frame(b"newer"))
            await new_writer.drain()
            await soon(lambda: got[-1] == (1, b"newer"))
            assert got[-1] == (1, b"newer")

            # Wrong target or unknown sender: refused, nothing delivered.
            for sender, target in ((1, 5), (9, 2)):
                reader, writer = await dial(address, sender, target)
                writer.write(frame(b"stranger"))
                assert await closed_by_peer(reader)
            assert (1, b"stranger") not in got and (9, b"stranger") not in got
            assert listener.refused == 2

            # The test-fault hook cuts this link like the pair's own.
            net.blocked.add(1)
            new_writer.write(frame(b"cut"))
            await new_writer.drain()
            await soon(lambda: net.stats[1].dropped_blocked)
            assert net.stats[1].dropped_blocked == 1 and (1, b"cut") not in got
        finally:
            await net.stop()
            await listener.stop()

    asyncio.run(main())


def test_answers_to_replication_go_back_on_the_workers_link_and_everything_else_on_the_pairs() -> None:
    async def main() -> None:
        listener = Listener(crc32c, LIMIT)
        address = await listener.start("127.0.0.1", 0)
        net = PeerNetwork(2, {1: ("127.0.0.1", 1)}, crc32c, LIMIT, lambda peer, bodies: None)
        listener.set_owner(ROLE_REPLICATION, net)
        ack = encode_message(Message(MessageType.APPEND_RESPONSE, 1, 2, 4, index=17))
        beat = encode_message(Message(MessageType.HEARTBEAT_RESPONSE, 1, 2, 4, read_seq=3))
        vote = encode_message(Message(MessageType.VOTE_RESPONSE, 1, 2, 4, reject=True))
        try:
            reader, writer = await dial(address, 1, 2)
            writer.write(frame(b"hello from the worker"))
            await writer.drain()
            await soon(lambda: net.stats[1].messages_in)
            net.send(1, [ack, vote, beat])
            decoder = FrameDecoder(crc32c, LIMIT)
            got: list[bytes] = []
            while len(got) < 2:
                got += decoder.feed(await asyncio.wait_for(reader.read(4096), 5))
            assert [decode_message(b).type for b in got] == [MessageType.APPEND_RESPONSE, MessageType.HEARTBEAT_RESPONSE]
            assert decode_message(got[0]).index == 17
            # The vote answer is not the worker's business: it went to the (absent) pair link.
            assert net.stats[1].dropped_unconnected == 1
            # With the worker's link gone, answers take the pair link again.
            writer.close()
            await soon(lambda: not net._replication_conns)
            net.send(1, [ack])
            assert net.stats[1].dropped_unconnected == 2
        finally:
            await net.stop()
            await listener.stop()

    asyncio.run(main())
