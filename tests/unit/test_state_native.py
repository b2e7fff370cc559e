"""Native parts of the state machine: MurmurHash3, the dedup table, SET_EVENT apply, queue records.

Each native structure is checked against an obviously correct Python model (docs/conventions.md §19).
"""

from __future__ import annotations

import array
import struct
from collections import OrderedDict

import mmh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream.state._state import (
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
    QueueLogCore,
    QueueSegment,
    append_touched,
    apply_dedup_add,
    apply_set_event,
    decode_queue_records,
    id_digest,
    routing_hash,
    scan_queue_segment,
)
from eventstream.storage import codec_reference, crc32c, wal_reference
from eventstream.storage._wal import scan_records
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


class RecordingLog(QueueLogCore):
    """A queue log whose files are lists: what append_touched asks of the file side."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.written = bytearray()

    def start_segment(self, max_ts: int) -> None:
        self.calls.append("start")
        self.segments.append(QueueSegment(self.next_offset, "mem", PositionIndex(), 0, max_ts, False))

    def flush(self) -> None:
        self.calls.append("flush")
        self.written += self.unwritten
        self.unwritten = bytearray()

    def close(self) -> None:
        self.calls.append("close")
        self.flush()


def _store(touched_events: list[Event], logs: dict, offsets: array.array, roll_bytes: int = 1 << 30,
           write_behind: int = 1 << 20) -> tuple[int, list]:
    """apply_set_event then append_touched with recording hooks; returns (result, hook calls)."""
    *_, records, positions, touched = apply(touched_events, len(offsets), DedupTable(), offsets)
    hooks: list = []
    recent: OrderedDict[int, object] = OrderedDict()

    def open_log(queue: int) -> RecordingLog:
        log = logs[queue] = RecordingLog()
        return log

    def note_open(queue: int, log: object) -> None:
        hooks.append(("open", queue))
        recent[queue] = log

    result = append_touched(logs, touched, records, array.array("I", positions).tobytes(), offsets, roll_bytes,
                            write_behind, recent, open_log, note_open, lambda q, log: hooks.append(("retain", q)))
    return result, hooks


def test_append_touched_stores_each_queue_once_and_rolls_after_the_batch() -> None:
    offsets = array.array("q", [0] * 4)
    logs: dict[int, RecordingLog] = {}
    batch = [Event(None, None, q % 2, 10 + i, b"p%d" % i) for i, q in enumerate(range(6))]
    result, hooks = _store(batch, logs, offsets)
    assert result == -1 and sorted(logs) == [0, 1] and hooks == [("open", 0), ("open", 1)]
    for queue, log in logs.items():
        assert log.calls == ["start"] and log.next_offset == 3 == offsets[queue]
        segment = log.segments[0]
        assert segment.count == 3 and segment.size_bytes == len(log.unwritten) == log.bytes_total
        assert log.newest_timestamp_us == segment.max_timestamp_us == max(e.timestamp_us for e in batch[queue::2])
        stored, _ = decode_queue_records(bytes(log.unwritten), 0, 0, 0, 10, 1 << 20, True, lambda *f: f)
        assert [s[5] for s in stored] == [e.payload for e in batch[queue::2]]
    # A tiny roll size seals the segment after the batch (never inside it), and the next batch
    # starts a new one; a tiny write-behind size writes at once; two segments ask for retention.
    result, hooks = _store([Event(None, None, 0, 50, b"x" * 10)] * 3, logs, offsets, roll_bytes=1, write_behind=1)
    log = logs[0]
    assert result == -1 and log.calls[1:] == ["flush", "close", "flush"]
    assert [s.sealed for s in log.segments] == [True] and log.next_offset == 6
    result, hooks = _store([Event(None, None, 0, 60, b"y")], logs, offsets)
    assert [s.sealed for s in log.segments] == [True, False] and log.segments[1].base_offset == 6
    assert hooks == [("retain", 0), ("open", 0)]
    assert "QueueSegment(6, 'mem', 1 records" in repr(log.segments[1])


def test_append_touched_reports_a_log_out_of_step_and_refuses_bad_groups() -> None:
    offsets = array.array("q", [0] * 2)
    logs: dict[int, RecordingLog] = {0: RecordingLog()}
    logs[0].next_offset = 5  # holds more than the apply loop assigned from
    result, _ = _store([Event(None, None, 0, 1, b"a")], logs, offsets)
    assert result == 0
    *_, records, positions, touched = apply([Event(None, None, 1, 1, b"b")], 2, DedupTable(), offsets)
    pos = array.array("I", positions).tobytes()
    queue, start, end, pstart, count, ts = touched[0]
    bad = [
        [(queue, start, len(records) + 1, pstart, count, ts)],  # records past the end
        [(queue, start, end, pstart, count + 1, ts)],  # positions past the end
        [(2, start, end, pstart, count, ts)],  # queue past next_offsets
        [(queue, 1, 0, pstart, count, ts)],  # ends before it starts
    ]
    for touched_bad in bad:
        with pytest.raises(ValueError, match="outside the apply result"):
            append_touched({}, touched_bad, records, pos, offsets, 1 << 30, 1 << 20, OrderedDict(),
                           lambda q: RecordingLog(), lambda q, log: None, lambda q, log: None)
    with pytest.raises(TypeError):
        append_touched({1: object()}, touched, records, pos, offsets, 1 << 30, 1 << 20, OrderedDict(),
                       lambda q: RecordingLog(), lambda q, log: None, lambda q, log: None)


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
            id_generated=st.booleans(),
        ).map(lambda e: e if e.event_id is not None else e._replace(id_generated=False)),
        min_size=1,
        max_size=30,
    ),
    st.integers(1, 2**40),
)
def test_queue_records_match_pure_python_references(events: list[Event], log_index: int) -> None:
    """Native records of a batch == the storage layer's pure-Python WAL and codec encoders,
    grouped by queue in offset order (docs/conventions.md §8)."""
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
    view, generated = table.freeze()
    image = table.export_entries()
    assert len(generated) == 0
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
