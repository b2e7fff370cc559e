"""Crash recovery: torn writes and flipped bytes in the last segment are cut at the first bad
record and reported; damage in an earlier segment is a hard error naming file and offset."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from eventstream.storage import CorruptionError, SegmentLog, wal_reference
from eventstream.storage._wal import WAL_HEADER_BYTES

SEGMENT_BYTES = 2048
RECORDS = 120
OFFSETS_TRIED = 40


def _payload(index: int) -> bytes:
    return bytes([index % 256]) * (7 + index % 23)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed log of RECORDS records spread over several segments."""
    directory = tmp_path_factory.mktemp("pristine")
    with SegmentLog.open(str(directory), segment_bytes=SEGMENT_BYTES, wal_sync=False) as log:
        log.append([(i, 1 + i // 40, _payload(i)) for i in range(1, RECORDS + 1)])
        assert len(log.sealed_segments()) >= 2
    return directory


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def _record_starts(segment: Path) -> tuple[int, list[int]]:
    """(first index, offsets of each record) of a clean segment, from its name and lengths."""
    data = segment.read_bytes()
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        offset += WAL_HEADER_BYTES + int.from_bytes(data[offset + 8 : offset + 12], "little")
    return int(segment.stem), starts


def _copy(pristine: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(pristine, target)
    return target


def _assert_prefix(log: SegmentLog, last_index: int) -> None:
    assert log.last_index == last_index
    entries = log.entries(1, last_index + 1)
    assert [(i, bytes(p)) for i, _, p in entries] == [(i, _payload(i)) for i in
                                                      range(1, last_index + 1)]


def test_torn_tail_is_cut_to_the_longest_valid_prefix(pristine: Path, tmp_path: Path) -> None:
    last = _segments(pristine)[-1]
    rng = random.Random(20261127)
    _check_torn_tails(pristine, tmp_path, sorted(rng.sample(range(last.stat().st_size),
                                                            OFFSETS_TRIED)))


@pytest.mark.slow
def test_torn_tail_at_every_offset(pristine: Path, tmp_path: Path) -> None:
    _check_torn_tails(pristine, tmp_path, list(range(_segments(pristine)[-1].stat().st_size)))


def _check_torn_tails(pristine: Path, tmp_path: Path, cuts: list[int]) -> None:
    last = _segments(pristine)[-1]
    first_index, starts = _record_starts(last)
    size = last.stat().st_size
    for trial, cut in enumerate(cuts):
        directory = _copy(pristine, tmp_path, f"torn-{trial}")
        os.truncate(directory / last.name, cut)
        complete = sum(1 for start in starts if start < cut
                       and (starts + [size])[starts.index(start) + 1] <= cut)
        with SegmentLog.open(str(directory), segment_bytes=SEGMENT_BYTES) as log:
            _assert_prefix(log, first_index + complete - 1)
            boundary = starts[complete] if complete < len(starts) else size
            if cut == boundary:
                assert log.recovery is None
            else:
                assert log.recovery is not None
                assert log.recovery.path.endswith(last.name)
                assert (log.recovery.offset, log.recovery.bytes_dropped) == (boundary, cut - boundary)
            # The cut log accepts the next index again.
            log.append([(log.last_index + 1, 9, b"after")])
        with SegmentLog.open(str(directory), segment_bytes=SEGMENT_BYTES) as log:
            assert log.recovery is None
            assert bytes(log.entries(log.last_index, log.last_index + 1)[0][2]) == b"after"
        shutil.rmtree(directory)


def test_the_cut_is_logged(pristine: Path, tmp_path: Path,
                           caplog: pytest.LogCaptureFixture) -> None:
    directory = _copy(pristine, tmp_path, "logged")
    last = _segments(directory)[-1]
    os.truncate(last, last.stat().st_size - 3)
    with caplog.at_level("WARNING"), SegmentLog.open(str(directory)) as log:
        assert log.recovery is not None
    assert f"recovery cut {last}" in caplog.text
    assert f"{log.recovery.bytes_dropped} bytes dropped" in caplog.text


def test_flipped_byte_in_last_segment_cuts_at_that_record(pristine: Path, tmp_path: Path) -> None:
    last = _segments(pristine)[-1]
    first_index, starts = _record_starts(last)
    size = last.stat().st_size
    rng = random.Random(7)
    for trial in range(OFFSETS_TRIED):
        position = rng.randrange(size)
        directory = _copy(pristine, tmp_path, f"flip-{trial}")
        segment = directory / last.name
        data = bytearray(segment.read_bytes())
        data[position] ^= rng.randrange(1, 256)
        segment.write_bytes(bytes(data))
        damaged = max(k for k, start in enumerate(starts) if start <= position)
        with SegmentLog.open(str(directory), segment_bytes=SEGMENT_BYTES) as log:
            _assert_prefix(log, first_index + damaged - 1)
            assert log.recovery is not None
            assert log.recovery.offset == starts[damaged]
            assert log.recovery.bytes_dropped == size - starts[damaged]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damage_in_an_earlier_segment_is_a_hard_error(pristine: Path, tmp_path: Path,
                                                      damage: str) -> None:
    directory = _copy(pristine, tmp_path, damage)
    segment = _segments(directory)[0]
    _, starts = _record_starts(segment)
    data = bytearray(segment.read_bytes())
    if damage == "flip":
        data[starts[3] + 30] ^= 0x40
        expected_offset = starts[3]
    else:
        del data[starts[5] + 10 :]
        expected_offset = starts[5]
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as caught:
        SegmentLog.open(str(directory), segment_bytes=SEGMENT_BYTES)
    assert segment.name in str(caught.value)
    assert f"offset {expected_offset}" in str(caught.value)


def test_missing_middle_segment_is_a_hard_error(pristine: Path, tmp_path: Path) -> None:
    directory = _copy(pristine, tmp_path, "gap")
    os.unlink(_segments(directory)[1])
    with pytest.raises(CorruptionError, match="expected"):
        SegmentLog.open(str(directory), segment_bytes=SEGMENT_BYTES)


def test_random_bytes_as_segments(tmp_path: Path) -> None:
    """Fuzz the WAL reader through open(): garbage is cut (last segment) or refused (earlier)."""
    rng = random.Random(99)
    for trial in range(30):
        garbage = rng.randbytes(rng.randrange(1, 600))
        as_last = tmp_path / f"last-{trial}"
        as_last.mkdir()
        (as_last / f"{1:020d}.wal").write_bytes(garbage)
        with SegmentLog.open(str(as_last)) as log:
            assert log.last_index == 0
            assert log.recovery is not None and log.recovery.bytes_dropped == len(garbage)
            log.append([(1, 1, b"x")])
        as_earlier = tmp_path / f"earlier-{trial}"
        as_earlier.mkdir()
        (as_earlier / f"{1:020d}.wal").write_bytes(garbage)
        (as_earlier / f"{2:020d}.wal").write_bytes(b"")
        with pytest.raises(CorruptionError, match=f"{1:020d}.wal: offset 0"):
            SegmentLog.open(str(as_earlier))


def test_corrupt_record_is_never_returned(pristine: Path, tmp_path: Path) -> None:
    """A byte flipped under an open log (bit rot) fails the read, not silently."""
    directory = _copy(pristine, tmp_path, "rot")
    with SegmentLog.open(str(directory), segment_bytes=SEGMENT_BYTES) as log:
        segment = _segments(directory)[0]
        _, starts = _record_starts(segment)
        with open(segment, "r+b") as file:
            file.seek(starts[2] + WAL_HEADER_BYTES)
            byte = file.read(1)
            file.seek(starts[2] + WAL_HEADER_BYTES)
            file.write(bytes([byte[0] ^ 1]))
        with pytest.raises(CorruptionError, match=f"offset {starts[2]}"):
            log.entries(1, 10)
        assert len(log.entries(1, 3)) == 2


PADDED_PAYLOADS = [b"s" * 50, b"L" * 70_000, b"L" * 65_536, b"t" * 10, b"L" * 66_000, b"l" * 65_535]


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One segment where large records appended alone (wal_sync off) sit after padding."""
    directory = tmp_path_factory.mktemp("padded")
    with SegmentLog.open(str(directory), wal_sync=False) as log:
        for index, payload in enumerate(PADDED_PAYLOADS, start=1):
            log.append([(index, 1, payload)])
    (segment,) = _segments(directory)
    assert [r.pad_bytes > 0 for r in wal_reference.scan(segment.read_bytes(), 1).records] == [
        False, True, True, False, True, False
    ]
    return directory


def _padded_damage_points(image: bytes) -> list[int]:
    """Offsets at every boundary, header and payload edge (the version byte among them), plus
    one inside each padding, header and payload."""
    points: set[int] = set()
    offset = 0
    for record in wal_reference.scan(image, 1).records:
        header = offset + record.pad_bytes
        end = header + WAL_HEADER_BYTES + len(record.payload)
        for base in (offset, header, header + WAL_HEADER_BYTES, end):
            points.update(p for p in (base - 1, base, base + 1, base + 4) if 0 <= p < len(image))
        points.update({offset + record.pad_bytes // 2, header + 20, (header + end) // 2})
        offset = end
    return sorted(points)


@pytest.mark.parametrize("damage", ["truncate", "flip", "zero-tail"])
def test_damage_around_padding_cuts_to_the_longest_valid_prefix(padded: Path, tmp_path: Path,
                                                                damage: str) -> None:
    """Torn writes and flipped bytes in and around padded records: recovery keeps exactly what
    the reference scanner accepts (padding is never mistaken for data, a tear inside padding
    cuts at the record boundary before it) and reports the cut."""
    (segment,) = _segments(padded)
    image = segment.read_bytes()
    for trial, position in enumerate(_padded_damage_points(image)):
        damaged = bytearray(image)
        if damage == "truncate":
            del damaged[position:]
        elif damage == "flip":
            damaged[position] ^= 0x5A
        else:
            damaged[position:] = bytes(len(damaged) - position)
        expected = wal_reference.scan(bytes(damaged), 1)
        directory = _copy(padded, tmp_path, f"{damage}-{trial}")
        (directory / segment.name).write_bytes(bytes(damaged))
        with SegmentLog.open(str(directory), wal_sync=False) as log:
            kept = len(expected.records)
            assert log.last_index == kept
            got = [bytes(p) for _, _, p in log.entries(1, kept + 1)]
            assert got == PADDED_PAYLOADS[:kept]
            dropped = bytes(damaged[expected.valid_bytes:])
            if dropped.count(0) == len(dropped):
                # Nothing, or only zeros, after the last record: no byte of a further record
                # reached the file, so nothing is reported cut (the zeros are removed).
                assert log.recovery is None
            else:
                assert log.recovery is not None
                assert (log.recovery.offset, log.recovery.bytes_dropped) == (
                    expected.valid_bytes, len(damaged) - expected.valid_bytes
                )
            assert (directory / segment.name).stat().st_size == expected.valid_bytes
            log.append([(kept + 1, 2, b"L" * 70_000)])  # appends (padded) after the cut
        with SegmentLog.open(str(directory), wal_sync=False) as log:
            assert log.recovery is None and log.last_index == kept + 1
        shutil.rmtree(directory)
