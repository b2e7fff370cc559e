"""WAL record framing: golden bytes, native framer/scanner vs the pure-Python reference, fuzz."""

from __future__ import annotations

import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream._wal import (
    SPARSE_STRIDE,
    WAL_HEADER_BYTES,
    prepare_packed,
    prepare_records,
    read_records,
    scan_records,
)
from eventstream.storage import crc32c
from eventstream.storage import wal_reference as reference
from eventstream.storage.errors import CorruptionError, StorageError

# A record for index 7, term 3, payload b"raft": pinned byte for byte (CONVENTIONS 9).
GOLDEN_RECORD = bytes.fromhex(
    "0104edc8"  # CRC-32C of everything after it
    "01" "01" "0000"  # version 1, type ENTRY, reserved
    "04000000"  # payload_len 4
    "0700000000000000"  # index 7
    "0300000000000000"  # term 3
    "72616674"  # b"raft"
)


def frame_all(records: list[tuple[int, int, bytes]], first_index: int, prev_term: int = 0) -> bytes:
    prepared = prepare_records(records, first_index, prev_term)
    framed, consumed, _ = prepared.frame(0, 2**62, True, 0, 0)
    assert consumed == len(records)
    return framed


def test_golden_record() -> None:
    assert frame_all([(7, 3, b"raft")], 7) == GOLDEN_RECORD
    assert reference.encode_record(7, 3, b"raft") == GOLDEN_RECORD
    assert crc32c(GOLDEN_RECORD[4:]) == int.from_bytes(GOLDEN_RECORD[:4], "little")


def test_reference_crc_matches_native() -> None:
    assert reference.crc32c(b"123456789") == 0xE3069283


def test_header_size_matches_reference() -> None:
    assert WAL_HEADER_BYTES == reference.WAL_HEADER_BYTES == 28


record_lists = st.integers(1, 1000).flatmap(
    lambda first: st.lists(
        st.tuples(st.integers(0, 3), st.binary(max_size=80)), max_size=40
    ).map(lambda items: _sequence(first, items))
)


def _sequence(first: int, items: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
    records = []
    term = 1
    for offset, (step, payload) in enumerate(items):
        term += step
        records.append((first + offset, term, payload))
    return records


@given(record_lists)
def test_native_framing_matches_reference(records: list[tuple[int, int, bytes]]) -> None:
    first = records[0][0] if records else 1
    framed = frame_all(records, first)
    assert framed == b"".join(reference.encode_record(*r) for r in records)
    count, valid, last_term, term_starts, sparse, status, reason = scan_records(framed, first, 0)
    assert (count, valid, status, reason) == (len(records), len(framed), 0, "ok")
    assert last_term == (records[-1][1] if records else 0)
    assert term_starts == [(r[0], r[1]) for i, r in enumerate(records)
                           if i == 0 or r[1] != records[i - 1][1]]
    offsets = array.array("Q", sparse)
    assert len(offsets) == -(-len(records) // SPARSE_STRIDE)
    scanned = reference.scan(framed, first)
    assert scanned.records == [reference.Record(*r) for r in records]


@settings(max_examples=200)
@given(record_lists, st.data())
def test_scan_of_damaged_segment_matches_reference(records: list[Any], data: Any) -> None:
    """Native and reference scans stop at the same record for the same reason."""
    first = records[0][0] if records else 1
    image = bytearray(frame_all(records, first))
    if image:
        action = data.draw(st.sampled_from(["flip", "truncate", "zero-tail"]))
        position = data.draw(st.integers(0, len(image) - 1))
        if action == "flip":
            image[position] ^= data.draw(st.integers(1, 255))
        elif action == "truncate":
            del image[position:]
        else:
            image[position:] = bytes(len(image) - position)
    native = scan_records(bytes(image), first, 0)
    expected = reference.scan(bytes(image), first)
    assert native[0] == len(expected.records)
    assert native[1] == expected.valid_bytes
    assert native[6] == expected.reason


@given(st.binary(max_size=300), st.integers(0, 2**64 - 1))
def test_scan_of_random_bytes_is_clean(image: bytes, first: int) -> None:
    native = scan_records(image, first, 0)
    expected = reference.scan(image, first)
    assert (native[0], native[1], native[6]) == (
        len(expected.records), expected.valid_bytes, expected.reason
    )


@given(st.binary(max_size=300))
def test_read_records_on_random_bytes_raises_only_corruption(image: bytes) -> None:
    try:
        records, *_ = read_records(image, 1, 1, 10, -1, 0, False, "fuzz", 0)
    except CorruptionError as error:
        assert "fuzz: record at offset" in str(error)
    else:
        assert all(isinstance(r[2], memoryview) for r in records)


def test_frame_respects_room_and_records_sparse_offsets() -> None:
    records = [(i, 1, b"p" * 10) for i in range(1, 201)]
    prepared = prepare_records(records, 1, 0)
    record_bytes = WAL_HEADER_BYTES + 10
    framed, consumed, sparse = prepared.frame(0, record_bytes * 100 + 5, False, 0, 1000)
    assert consumed == 100
    assert len(framed) == record_bytes * 100
    assert list(array.array("Q", sparse)) == [1000, 1000 + 64 * record_bytes]
    framed, consumed, _ = prepared.frame(100, 3, False, 100, 0)
    assert consumed == 0
    framed, consumed, sparse = prepared.frame(100, 3, True, 100, 0)
    assert consumed == 1
    # Record 128 of the segment (the 29th of this call) is the next sparse point.
    _, consumed, sparse = prepared.frame(100, 2**40, True, 100, 0)
    assert consumed == 100
    assert list(array.array("Q", sparse)) == [28 * record_bytes, (28 + 64) * record_bytes]


@pytest.mark.parametrize(
    "records, message",
    [
        ([(2, 1, b"")], "not the next index 1"),
        ([(1, 1, b""), (3, 1, b"")], "not the next index 2"),
        ([(1, 2, b""), (2, 1, b"")], "below the previous term"),
        ([(1, 1, "text")], "bytes-like"),
        ([(1, -1, b"")], "ints"),
        ([(1, 1)], "tuple"),
    ],
)
def test_prepare_rejects_bad_sequences(records: list[Any], message: str) -> None:
    with pytest.raises(StorageError, match=message):
        prepare_records(records, 1, 0)


def test_prepare_rejects_term_below_previous_batch() -> None:
    with pytest.raises(StorageError, match="below the previous term"):
        prepare_records([(5, 2, b"")], 5, 3)


@given(record_lists, st.integers(0, 3), st.integers(1, 400))
def test_vectored_framing_writes_the_same_bytes(records: list[Any], start: int, room: int) -> None:
    first = records[0][0] if records else 1
    start = min(start, len(records))
    for prepared in (
        prepare_records(records, first, 0),
        prepare_packed(first, 1, 0, b"".join(r[2] for r in records),
                       array.array("I", [len(r[2]) for r in records])),
    ):
        framed, consumed, sparse = prepared.frame(start, room, True, 5, 100)
        buffers, consumed_v, sparse_v, total = prepared.frame_vectored(start, room, True, 5, 100)
        assert (consumed_v, sparse_v, total) == (consumed, sparse, len(framed))
        assert b"".join(bytes(b) for b in buffers) == framed


def test_prepare_packed_matches_tuples() -> None:
    payloads = [b"a", b"", b"ccc"]
    packed = prepare_packed(10, 4, 1, b"".join(payloads), array.array("I", [1, 0, 3]))
    tuples = prepare_records([(10 + i, 4, p) for i, p in enumerate(payloads)], 10, 1)
    assert packed.frame(0, 2**40, True, 0, 0) == tuples.frame(0, 2**40, True, 0, 0)
    assert packed.term_starts == tuples.term_starts == [(10, 4)]


@pytest.mark.parametrize(
    "buffer, lengths, message",
    [
        (b"abc", [1, 1], "buffer holds 3"),
        (b"abc", [4], "more than the 3-byte buffer"),
    ],
)
def test_prepare_packed_rejects_mismatched_lengths(buffer: bytes, lengths: list[int],
                                                   message: str) -> None:
    with pytest.raises(StorageError, match=message):
        prepare_packed(1, 1, 0, buffer, array.array("I", lengths))
