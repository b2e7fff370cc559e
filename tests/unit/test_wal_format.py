"""WAL record framing: golden bytes, native framer/scanner vs the pure-Python reference, fuzz."""

from __future__ import annotations

import array
import os
import tempfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstream.storage import crc32c
from eventstream.storage import wal_reference as reference
from eventstream.storage._wal import (
    SPARSE_STRIDE,
    WAL_ALIGN_PAYLOAD_BYTES_MIN,
    WAL_HEADER_BYTES,
    WAL_PAYLOAD_ALIGN_BYTES,
    SegmentFile,
    prepare_packed,
    prepare_records,
    read_records,
    scan_records,
)
from eventstream.storage.errors import CorruptionError, StorageError

# A record for index 7, term 3, payload b"raft": pinned byte for byte (docs/conventions.md §9).
GOLDEN_RECORD = bytes.fromhex(
    "0104edc8"  # CRC-32C of everything after it
    "01" "01" "0000"  # version 1, type ENTRY, reserved
    "04000000"  # payload_len 4
    "0700000000000000"  # index 7
    "0300000000000000"  # term 3
    "72616674"  # b"raft"
)

# The same record as the first of a segment with its payload aligned: 65508 zero bytes of
# padding (a hole on disk), then the header, whose pad_code says so, then the payload at 65536.
GOLDEN_PADDED_HEADER = bytes.fromhex(
    "94dbb90c"  # CRC-32C of everything after it (the padding is not covered)
    "01" "01" "c8ff"  # version 1, type ENTRY, pad_code 65480 (padding minus a header's 28)
    "04000000"  # payload_len 4
    "0700000000000000"  # index 7
    "0300000000000000"  # term 3
)
GOLDEN_PADDED_RECORD = bytes(65508) + GOLDEN_PADDED_HEADER + b"raft"


def frame_all(records: list[tuple[int, int, bytes]], first_index: int, prev_term: int = 0) -> bytes:
    prepared = prepare_records(records, first_index, prev_term)
    framed, consumed, _ = prepared.frame(0, 2**62, True, 0, 0)
    assert consumed == len(records)
    return framed


def test_golden_record() -> None:
    assert frame_all([(7, 3, b"raft")], 7) == GOLDEN_RECORD
    assert reference.encode_record(7, 3, b"raft") == GOLDEN_RECORD
    assert crc32c(GOLDEN_RECORD[4:]) == int.from_bytes(GOLDEN_RECORD[:4], "little")


def test_golden_padded_record() -> None:
    assert reference.align_pad_bytes(0) == 65508
    assert reference.encode_record(7, 3, b"raft", pad_bytes=65508) == GOLDEN_PADDED_RECORD
    assert crc32c(GOLDEN_PADDED_HEADER[4:] + b"raft") == int.from_bytes(GOLDEN_PADDED_HEADER[:4],
                                                                        "little")
    count, valid, last_term, *_ = scan_records(GOLDEN_PADDED_RECORD, 7, 0)
    assert (count, valid, last_term) == (1, len(GOLDEN_PADDED_RECORD), 3)
    records, *_ = read_records(GOLDEN_PADDED_RECORD, 7, 7, 8, -1, 0, False, "golden", 0)
    assert [(i, t, bytes(p)) for i, t, p in records] == [(7, 3, b"raft")]
    # Only the version byte of the padding is looked at.
    filled = b"\xff" * 4 + b"\x00" + b"\xff" * 65503 + GOLDEN_PADDED_RECORD[65508:]
    assert scan_records(filled, 7, 0)[:2] == (1, len(filled))


@pytest.mark.parametrize(
    "boundary, pad",
    [(0, 65508), (65508, 0), (65507, 65537), (65509, 65535), (65536 - 56, 28), (65536 - 57, 29),
     (65536 * 3 - 28 - 65563, 65563)],
)
def test_padding_is_zero_or_at_least_a_header(boundary: int, pad: int) -> None:
    """A reader can always see the zero version byte of padding, so padding is never shorter
    than a header: the header goes one alignment further instead. The longest padding still
    fits pad_code, which counts from a header's length."""
    assert reference.align_pad_bytes(boundary) == pad
    assert (boundary + pad + WAL_HEADER_BYTES) % WAL_PAYLOAD_ALIGN_BYTES == 0
    assert pad == 0 or WAL_HEADER_BYTES <= pad < WAL_PAYLOAD_ALIGN_BYTES + WAL_HEADER_BYTES
    assert pad == 0 or pad - WAL_HEADER_BYTES <= 0xFFFF
    # The native reader finds the header from the file offset of the piece it is given.
    record = reference.encode_record(9, 1, b"x", pad)
    got, *_ = read_records(record, 9, 9, 10, -1, 0, False, "piece", boundary)
    assert [(i, bytes(p)) for i, _, p in got] == [(9, b"x")]


def test_padded_record_read_from_a_piece_of_the_segment() -> None:
    """read_records gets pieces of a segment with their file offset: the header place follows
    from file offsets, and a piece that ends inside the padding asks for the rest."""
    image = reference.encode_record(1, 1, b"a" * 100) + reference.encode_record(
        2, 1, b"b" * 40_000, reference.align_pad_bytes(128)
    )
    piece = image[128:]
    records, at, consumed, need, stop, _ = read_records(piece[:1000], 2, 2, 3, -1, 0, False,
                                                        "piece", 128)
    assert (records, at, consumed, need) == ([], 2, 0, reference.align_pad_bytes(128) + 28)
    records, at, consumed, need, stop, _ = read_records(piece[:70_000], 2, 2, 3, -1, 0, False,
                                                        "piece", 128)
    assert (records, consumed, need) == ([], 0, len(piece))
    records, at, consumed, need, stop, _ = read_records(piece, 2, 2, 3, -1, 0, False, "piece", 128)
    assert [(i, bytes(p)) for i, _, p in records] == [(2, b"b" * 40_000)] and stop
    with pytest.raises(CorruptionError, match="unknown record version"):
        read_records(piece, 2, 2, 3, -1, 0, False, "piece", 0)  # told the wrong file offset


def test_header_in_the_wrong_place_for_its_padding_is_refused() -> None:
    image = bytes(65508) + reference.encode_record(7, 3, b"raft")  # pad_code 0 after padding
    reason = "padding length does not match the header's place"
    assert reference.scan(image, 7).reason == reason
    assert scan_records(image, 7, 0)[:2] == (0, 0) and scan_records(image, 7, 0)[6] == reason
    unpadded_with_pad = reference.encode_record(7, 3, b"raft", 0)
    unpadded_with_pad = unpadded_with_pad[:6] + (5).to_bytes(2, "little") + unpadded_with_pad[8:]
    assert reference.scan(unpadded_with_pad, 7).reason == reason  # CRC is checked after padding
    assert scan_records(unpadded_with_pad, 7, 0)[6] == reason


def test_alignment_constants_match_reference() -> None:
    assert WAL_PAYLOAD_ALIGN_BYTES == reference.WAL_PAYLOAD_ALIGN_BYTES == 65536
    assert WAL_ALIGN_PAYLOAD_BYTES_MIN == 65536


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


def _write_through_segment_file(batches: list[list[tuple[int, int, bytes]]], segment_bytes: int,
                                align_alone: bool, packed: bool = False
                                ) -> tuple[bytes, SegmentFile]:
    """Writes each batch with SegmentFile.write (into one segment while it fits), prepared from
    tuples or packed (one term per batch), and returns the file's bytes (holes read as zeros)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "segment")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        segment = SegmentFile(path, batches[0][0][0], fd)
        try:
            prev_term = 0
            for batch in batches:
                if packed:
                    prepared = prepare_packed(
                        batch[0][0], batch[0][1], prev_term, b"".join(r[2] for r in batch),
                        array.array("I", [len(r[2]) for r in batch]),
                    )
                else:
                    prepared = prepare_records(batch, batch[0][0], prev_term)
                assert segment.write(prepared, 0, segment_bytes, align_alone) == len(batch)
                prev_term = batch[-1][1]
            assert os.fstat(fd).st_size == segment.size
            segment.release_preallocation()
            with open(path, "rb") as file:
                return file.read(), segment
        finally:
            os.close(fd)


def _reference_image(batches: list[list[tuple[int, int, bytes]]], align_alone: bool) -> bytes:
    image = b""
    for batch in batches:
        for index, term, payload in batch:
            alone = align_alone and len(batch) == 1 and len(payload) >= WAL_ALIGN_PAYLOAD_BYTES_MIN
            pad = reference.align_pad_bytes(len(image)) if alone else 0
            image += reference.encode_record(index, term, payload, pad)
    return image


payload_sizes = st.sampled_from([0, 1, 100, 16_384, 40_000, 65_535, 65_536, 70_000])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(payload_sizes, min_size=1, max_size=3), min_size=1, max_size=5),
       st.booleans(), st.booleans())
def test_segment_file_writes_what_the_reference_encodes(shapes: list[list[int]],
                                                        align_alone: bool, packed: bool) -> None:
    """Every write path (copied, vectored, aligned with a hole) against the reference framing;
    sparse offsets point at record starts."""
    batches, index = [], 1
    for shape in shapes:
        batches.append([(index + k, 1 + index // 3, bytes([index + k]) * size)
                        for k, size in enumerate(shape)])
        index += len(shape)
    image, segment = _write_through_segment_file(batches, 2**40, align_alone, packed)
    assert image == _reference_image(batches, align_alone)
    assert segment.count == index - 1 and segment.size == len(image)
    scanned = reference.scan(image, 1)
    assert [r[:3] for r in scanned.records] == [r for batch in batches for r in batch]
    assert array.array("Q", scanned_offsets(image))[::SPARSE_STRIDE] == segment.sparse


def scanned_offsets(image: bytes) -> list[int]:
    """Record boundaries of a valid image, from the reference scan."""
    offsets, offset = [], 0
    for record in reference.scan(image, 1).records:
        offsets.append(offset)
        offset += record.pad_bytes + WAL_HEADER_BYTES + len(record.payload)
    return offsets


def test_aligned_payload_starts_on_the_boundary_and_leaves_a_hole() -> None:
    image, segment = _write_through_segment_file(
        [[(1, 1, b"a" * 100)], [(2, 1, b"b" * 65_536)], [(3, 1, b"c" * 65_536)]], 2**40, True
    )
    second = 128  # after record 1 (28 + 100 bytes)
    assert second + reference.align_pad_bytes(second) + WAL_HEADER_BYTES == WAL_PAYLOAD_ALIGN_BYTES
    assert image[second : WAL_PAYLOAD_ALIGN_BYTES - WAL_HEADER_BYTES] == bytes(
        WAL_PAYLOAD_ALIGN_BYTES - WAL_HEADER_BYTES - second
    )
    assert image[WAL_PAYLOAD_ALIGN_BYTES : WAL_PAYLOAD_ALIGN_BYTES + 65_536] == b"b" * 65_536
    third = WAL_PAYLOAD_ALIGN_BYTES + 65_536
    assert image[third + WAL_PAYLOAD_ALIGN_BYTES :] == b"c" * 65_536
    assert segment.size == 2 * WAL_PAYLOAD_ALIGN_BYTES + 2 * 65_536


def test_padding_never_rolls_a_segment() -> None:
    """A record that fits only without its padding is written unpadded."""
    small = [(1, 1, b"a" * 100)]
    big = [(2, 1, b"b" * 70_000)]
    limit = 128 + WAL_HEADER_BYTES + 70_000  # room for the record, not for its padding
    image, _ = _write_through_segment_file([small, big], limit, True)
    assert image == reference.encode_record(*small[0]) + reference.encode_record(*big[0])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=40), st.booleans()), min_size=1, max_size=6),
       st.data())
def test_scan_of_damaged_padded_segment_matches_reference(items: list[tuple[bytes, bool]],
                                                         data: Any) -> None:
    """Padded and unpadded records, torn or damaged anywhere (padding, header, payload): native
    and reference scans keep the same prefix for the same reason, and a read of that prefix
    returns exactly its records."""
    image = bytearray()
    headers = []
    for k, (payload, padded) in enumerate(items):
        pad = reference.align_pad_bytes(len(image)) if padded else 0
        headers.append(len(image) + pad)
        image += reference.encode_record(5 + k, 2, payload, pad)
    action = data.draw(st.sampled_from(["flip", "truncate", "zero-tail", "none"]))
    near_header = st.sampled_from(headers).flatmap(lambda h: st.integers(max(0, h - 8), h + 40))
    position = min(data.draw(near_header | st.integers(0, len(image) - 1)), len(image) - 1)
    if action == "flip":
        image[position] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        del image[position:]
    elif action == "zero-tail":
        image[position:] = bytes(len(image) - position)
    native = scan_records(bytes(image), 5, 0)
    expected = reference.scan(bytes(image), 5)
    assert (native[0], native[1], native[6]) == (
        len(expected.records), expected.valid_bytes, expected.reason
    )
    valid = bytes(image[: expected.valid_bytes])
    got, *_ = read_records(valid, 5, 5, 5 + len(expected.records), -1, 0, False, "padded", 0)
    assert [(i, t, bytes(p)) for i, t, p in got] == [r[:3] for r in expected.records]


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
