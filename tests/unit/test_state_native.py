"""Native parts of the state machine: MurmurHash3, the dedup table, SET_EVENT apply, queue records.

Each native structure is checked against an obviously correct Python model (CONVENTIONS 19).
"""

from __future__ import annotations

import array
import struct

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream._state import (
    DEDUP_ENTRY_BYTES,
    STATUS_BAD_QUEUE,
    STATUS_DEDUP_FULL,
    STATUS_DUPLICATE,
    STATUS_STORED,
    DedupFullError,
    DedupTable,
    MalformedCommandError,
    PositionIndex,
    QueueDataError,
    apply_dedup_add,
    apply_set_event,
    decode_queue_records,
    id_digest,
    routing_hash,
    scan_queue_segment,
)
from eventstream._wal import scan_records
from eventstream.storage import codec_reference, crc32c, wal_reference
from eventstream.storage.codec import Event, encode_batch


@given(st.binary(max_size=80))
def test_murmur3_matches_mmh3(data: bytes) -> None:
    assert routing_hash(data) == mmh3.hash(data, signed=False)
    h1, h2 = id_digest(data)
    assert h2 << 64 | h1 == mmh3.hash128(data)


# Operations for the dedup differential test: add an id (from a small pool, so repeats happen)
# with a timestamp, or expire up to a cutoff.
dedup_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 60), st.integers(0, 1000)),
        st.tuples(st.just("expire"), st.integers(0, 1000)),
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(dedup_ops)
def test_dedup_table_matches_dict_model(ops: list[tuple]) -> None:
    table = DedupTable()
    model: dict[bytes, tuple[int, int, int]] = {}  # insertion-ordered: arrival order
    for n, op in enumerate(ops):
        if op[0] == "add":
            event_id = b"id-%d" % op[1]
            got = table.add(event_id, n % 7, n, op[2])
            if event_id in model:
                assert got == model[event_id][:2]
            else:
                assert got is None
                model[event_id] = (n % 7, n, op[2])
        else:
            expired = 0
            for event_id, (_, _, seen) in list(model.items()):
                if seen >= op[1]:
                    break
                del model[event_id]
                expired += 1
            assert table.expire(op[1]) == expired
        assert len(table) == len(model)
    for i in range(61):
        event_id = b"id-%d" % i
        want = model.get(event_id)
        assert table.lookup(event_id) == (want[:2] if want else None)


def test_dedup_table_many_ids_grow_expire_and_chunks() -> None:
    """Crosses several 65,536-entry chunks and slot-table growths, then expires most of it."""
    table = DedupTable()
    count = 200_000
    for i in range(count):
        assert table.add(i.to_bytes(8, "little"), 1, i, i) is None
    assert table.expire(150_000) == 150_000
    assert len(table) == 50_000
    assert table.lookup((149_999).to_bytes(8, "little")) is None
    assert table.lookup((150_000).to_bytes(8, "little")) == (1, 150_000)
    assert table.add((199_999).to_bytes(8, "little"), 0, 0, 0) == (1, 199_999)
    assert table.memory_bytes / len(table) < 200  # slots stay at the peak size after expiry


def test_dedup_export_import_roundtrip_and_damage() -> None:
    table = DedupTable()
    for i in range(1000):
        table.add(b"e%d" % i, i % 3, i, 10 * i)
    image = table.export_entries()
    assert len(image) == 1000 * DEDUP_ENTRY_BYTES
    h1, h2, offset, seen, queue = struct.unpack_from("<QQqqi", image, 0)
    assert (h1, h2) == id_digest(b"e0") and (offset, seen, queue) == (0, 0, 0)
    copy = DedupTable()
    copy.import_entries(image)
    assert copy.export_entries() == image
    with pytest.raises(ValueError, match="whole number"):
        DedupTable().import_entries(image[:-1])
    with pytest.raises(ValueError, match="repeats a digest"):
        DedupTable().import_entries(image[:DEDUP_ENTRY_BYTES] * 2)


def test_dedup_full_refuses_instead_of_forgetting() -> None:
    table = DedupTable(1000)
    for i in range(1000):
        table.add(b"%d" % i, 0, i, i)
    with pytest.raises(DedupFullError, match="maximum of 1000"):
        table.add(b"one more", 0, 0, 0)
    assert table.lookup(b"0") == (0, 0)


def apply(
    events: list[Event], queue_count: int, table: DedupTable, offsets: array.array, log_index=1
):
    statuses, queues, offs, records, positions, touched = apply_set_event(
        encode_batch(events), queue_count, table, offsets, log_index
    )
    return (
        list(statuses),
        list(memoryview(queues).cast("i")),
        list(memoryview(offs).cast("q")),
        records,
        memoryview(positions).cast("I"),
        touched,
    )


def test_set_event_routing_dedup_and_rejection() -> None:
    table = DedupTable()
    offsets = array.array("q", [0] * 8)
    events = [
        Event(b"a", b"user-1", None, 100, b"first"),
        Event(None, b"user-1", None, 101, b"second"),
        Event(b"a", b"user-2", None, 102, b"retry of first"),
        Event(None, None, 5, 103, b"explicit"),
        Event(None, None, 8, 104, b"queue past queue_count"),
    ]
    statuses, queues, offs, records, positions, touched = apply(events, 8, table, offsets)
    home = mmh3.hash(b"user-1", signed=False) % 8
    assert statuses == [
        STATUS_STORED,
        STATUS_STORED,
        STATUS_DUPLICATE,
        STATUS_STORED,
        STATUS_BAD_QUEUE,
    ]
    assert queues == [home, home, home, 5, -1]
    assert offs == [0, 1, 0, 0, -1]
    assert offsets[home] == 2 and offsets[5] == 1
    assert sorted(t[0] for t in touched) == sorted({home, 5})
    for queue, start, end, pos_start, count, max_ts in touched:
        part = records[start:end]
        stored, used = decode_queue_records(part, 0, 0, 0, 100, 1 << 20, True, lambda *f: f)
        assert len(stored) == count and used == len(part)
        assert [positions[pos_start + i] for i in range(count)] == [
            0,
            *([28 + 24 + 1 + 6 + 5] if count == 2 else []),
        ]
        if queue == home:
            assert [s[5] for s in stored] == [b"first", b"second"] and max_ts == 101
    # A later batch sees the id remembered across batches.
    statuses, queues, offs, *_ = apply([Event(b"a", b"zzz", None, 1, b"")], 8, table, offsets)
    assert (statuses, queues, offs) == ([STATUS_DUPLICATE], [home], [0])


def test_set_event_full_dedup_table_rejects_per_event() -> None:
    table = DedupTable(1000)
    offsets = array.array("q", [0])
    events = [Event(b"%d" % i, None, None, i, b"") for i in range(1001)]
    statuses, *_ = apply(events, 1, table, offsets)
    assert statuses[:1000] == [STATUS_STORED] * 1000 and statuses[1000] == STATUS_DEDUP_FULL
    assert offsets[0] == 1000


def test_malformed_batch_changes_nothing() -> None:
    table = DedupTable()
    offsets = array.array("q", [0, 0])
    good = encode_batch([Event(b"x", b"k", None, 1, b"p"), Event(b"y", b"k", None, 2, b"q")])
    with pytest.raises(MalformedCommandError, match="at byte"):
        apply_set_event(good[:-1], 2, table, offsets, 1)
    with pytest.raises(MalformedCommandError, match="at byte 0"):
        apply_set_event(b"\x07" + good[1:], 2, table, offsets, 1)
    assert len(table) == 0 and list(offsets) == [0, 0]


def test_queue_record_is_a_wal_record_of_the_event() -> None:
    """Layout pinned: csrc/wal_format.h framing, index = queue offset, term = the Raft index of
    the storing entry, payload = the event's codec bytes unchanged."""
    table = DedupTable()
    offsets = array.array("q", [41])
    _, _, _, records, _, _ = apply(
        [Event(None, b"k", None, 7, b"pay")], 1, table, offsets, log_index=9
    )
    event = encode_batch([Event(None, b"k", None, 7, b"pay")])[12:]
    after_crc = struct.pack("<BBHIQQ", 1, 1, 0, len(event), 41, 9) + event
    assert records == struct.pack("<I", crc32c(after_crc)) + after_crc
    # The storage layer's own WAL scanner accepts a queue segment image as it is.
    count, valid_bytes, last_term, *_ = scan_records(records, 41, 0)
    assert (count, valid_bytes, last_term) == (1, len(records), 9)


def many_records(count: int) -> bytes:
    table = DedupTable()
    offsets = array.array("q", [0])
    events = [Event(None, None, None, i, b"payload %d" % i) for i in range(count)]
    return apply(events, 1, table, offsets)[3]


def test_sparse_index_and_reads_from_any_offset() -> None:
    records = many_records(200)
    index = PositionIndex()
    assert scan_queue_segment(records, 0, index) == (200, 199)
    assert index.record_count == 200 and len(index) == 4  # records 0, 64, 128, 192
    for offset in (0, 1, 63, 64, 65, 130, 199):
        start, skip = index.locate(offset)
        got, _ = decode_queue_records(
            records, start, offset - skip, skip, 2, 1 << 20, True, lambda *f: f
        )
        assert [g[0] for g in got] == [offset, offset + 1][: 200 - offset]
        assert got[0][5] == b"payload %d" % offset
    with pytest.raises(IndexError):
        index.locate(200)


def test_scan_and_decode_catch_damage() -> None:
    records = many_records(5)
    damaged = bytearray(records)
    damaged[-1] ^= 1
    with pytest.raises(QueueDataError, match="record 4 at byte .*CRC"):
        scan_queue_segment(bytes(damaged), 0, PositionIndex())
    with pytest.raises(QueueDataError, match="record 4 .*cut short"):
        scan_queue_segment(records[:-1], 0, PositionIndex())
    with pytest.raises(QueueDataError, match="different offset"):
        decode_queue_records(records, 0, 3, 0, 10, 1 << 20, True, lambda *f: f)


def test_dedup_add_body() -> None:
    table = DedupTable()
    body = struct.pack("<I", 2) + struct.pack("<Hq", 1, 5) + b"a" + struct.pack("<Hq", 1, 6) + b"a"
    assert list(apply_dedup_add(body, table)) == [STATUS_STORED, STATUS_DUPLICATE]
    assert table.lookup(b"a") == (-1, -1)
    with pytest.raises(MalformedCommandError, match="after its last id"):
        apply_dedup_add(body + b"x", table)
    with pytest.raises(MalformedCommandError, match="length 0"):
        apply_dedup_add(struct.pack("<IHq", 1, 0, 0), table)
    assert len(table) == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.builds(
            Event,
            event_id=st.none() | st.binary(max_size=20),
            key=st.none() | st.binary(max_size=20),
            queue=st.none() | st.integers(0, 5),
            timestamp_us=st.integers(-(2**63), 2**63 - 1),
            payload=st.binary(max_size=100),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 2**40),
)
def test_queue_records_match_pure_python_references(events: list[Event], log_index: int) -> None:
    """Native records of a batch == the storage layer's pure-Python WAL and codec encoders,
    grouped by queue in offset order (CONVENTIONS 8)."""
    table = DedupTable()
    offsets = array.array("q", [0] * 4)
    statuses, queues, offs, records, _, touched = apply(events, 4, table, offsets, log_index)
    want = b""
    for queue, *_ in touched:
        for event, status, q, offset in zip(events, statuses, queues, offs):
            if status == STATUS_STORED and q == queue:
                event_bytes = codec_reference.encode_batch([event])[12:]
                want += wal_reference.encode_record(offset, log_index, event_bytes)
    assert records == want


def test_frozen_view_stays_as_it_was_while_the_table_changes() -> None:
    """A snapshot's view shares chunks with the table: adds past its tail and expiry that frees
    chunks must not change what the view reads (chunks live until the view is dropped)."""
    table = DedupTable()
    for i in range(150_000):
        table.add(b"a%d" % i, 1, i, i)
    view = table.freeze()
    image = table.export_entries()
    assert table.expire(140_000) == 140_000  # frees the first two chunks of the table
    for i in range(100_000):
        table.add(b"b%d" % i, 2, i, 10**6 + i)
    assert len(view) == 150_000
    assert b"".join(view.pieces(50_000)) == image
    assert view.export_range(149_999, 1) == image[-DEDUP_ENTRY_BYTES:]
    with pytest.raises(IndexError):
        view.export_range(149_999, 2)
    del view
    assert len(table) == 110_000 and table.lookup(b"a149999") == (1, 149_999)
