import struct

from eventstream.batcher import PendingAppend, ProposalBatcher
from eventstream.state.commands import CommandType
from eventstream.storage.codec import decode_batch, encode_batch

SEEN_US = 1_790_000_000_123_456  # the leader's clock when it takes an entry


def batch(tag: str, n: int, queue: int | None = None) -> bytes:
    return encode_batch([(f"{tag}-{i}".encode(), b"key", queue, 1000 + i, f"{tag} payload {i}".encode()) for i in range(n)])


def waiter(n: int, rid: int) -> PendingAppend:
    return PendingAppend(session=None, request_id=rid, event_count=n, received_at=0.0)


def test_merged_entry_is_one_valid_batch_with_every_event_in_order() -> None:
    b = ProposalBatcher(batch_size=100, batch_bytes_max=1 << 20)
    b.add(batch("a", 3), waiter(3, 1))
    b.add(batch("b", 2), waiter(2, 2))
    built = b.take(SEEN_US)
    assert built is not None and len(b) == 0 and b.pending_events == 0 and b.pending_bytes == 0
    assert built.data[0] == CommandType.SET_EVENT_AT
    assert struct.unpack_from("<q", built.data, 1) == (SEEN_US,)
    view = decode_batch(built.data[9:])
    assert [e.event_id for e in view] == [b"a-0", b"a-1", b"a-2", b"b-0", b"b-1"]
    assert [w.first_event for w in built.waiters] == [0, 3]
    assert built.event_count == 5


def test_take_stops_at_batch_size_but_never_splits_a_request() -> None:
    b = ProposalBatcher(batch_size=4, batch_bytes_max=1 << 20)
    for rid, n in enumerate((3, 3, 10, 1)):
        b.add(batch(f"r{rid}", n), waiter(n, rid))
    sizes = []
    while (built := b.take(SEEN_US)) is not None:
        sizes.append([w.event_count for w in built.waiters])
        assert len(decode_batch(built.data[9:])) == built.event_count
    assert sizes == [[3], [3], [10], [1]]


def test_drain_returns_every_waiter() -> None:
    b = ProposalBatcher(batch_size=10, batch_bytes_max=1 << 20)
    b.add(batch("a", 1), waiter(1, 1))
    b.add(batch("b", 1), waiter(1, 2))
    assert [w.request_id for w in b.drain()] == [1, 2]
    assert b.take(SEEN_US) is None and b.pending_bytes == 0
