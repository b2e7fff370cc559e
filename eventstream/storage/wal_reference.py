"""Pure-Python reference of WAL record framing (byte layout: csrc/wal_format.h).

Used by differential tests against the native framer and scanner, and by tools that inspect
segment files without the compiled extension.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

WAL_VERSION = 1
WAL_TYPE_ENTRY = 1
WAL_PAYLOAD_BYTES_MAX = 128 * 1024 * 1024
WAL_PAYLOAD_ALIGN_BYTES = 64 * 1024
_HEADER = struct.Struct("<IBBHIQQ")  # crc, version, type, pad_code, payload_len, index, term
WAL_HEADER_BYTES = _HEADER.size


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes, value: int = 0) -> int:
    """Bytewise CRC-32C (Castagnoli), the obviously-correct twin of csrc/crc32c.c."""
    crc = value ^ 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


class Record(NamedTuple):
    log_index: int
    term: int
    payload: bytes
    pad_bytes: int = 0  # padding before the header


class ScanResult(NamedTuple):
    """The longest valid prefix of a segment image and why the walk stopped."""

    records: list[Record]
    valid_bytes: int
    reason: str  # "ok" when the walk reached the end of the data


def encode_record(index: int, term: int, payload: bytes, pad_bytes: int = 0) -> bytes:
    """One framed entry record, from its boundary: `pad_bytes` zero bytes (0, or at least a
    header's length), header, payload."""
    body = _HEADER.pack(0, WAL_VERSION, WAL_TYPE_ENTRY, _pad_code(pad_bytes), len(payload), index,
                        term)[4:]
    body += payload
    return bytes(pad_bytes) + struct.pack("<I", crc32c(body)) + body


def _pad_code(pad_bytes: int) -> int:
    """The header's pad_code: padding counted from a header's length, so that it fits 16 bits."""
    return pad_bytes - WAL_HEADER_BYTES if pad_bytes else 0


def align_pad_bytes(boundary: int) -> int:
    """Padding before the header of a record at file offset `boundary` that puts its payload at
    a multiple of WAL_PAYLOAD_ALIGN_BYTES: 0 when it is already there, else at least a header."""
    if (boundary + WAL_HEADER_BYTES) % WAL_PAYLOAD_ALIGN_BYTES == 0:
        return 0
    payload_at = -(-(boundary + 2 * WAL_HEADER_BYTES) // WAL_PAYLOAD_ALIGN_BYTES)
    return payload_at * WAL_PAYLOAD_ALIGN_BYTES - WAL_HEADER_BYTES - boundary


def scan(data: bytes, first_index: int, prev_term: int = 0) -> ScanResult:
    """Walks records from offset 0 of a segment image, checking each as csrc/wal_format.h does,
    in the same order."""
    records: list[Record] = []
    offset = 0
    term = prev_term
    reason = "ok"
    while offset < len(data):
        reason = _check(data, offset, first_index + len(records), term)
        if reason != "ok":
            break
        at = _header_offset(data, offset)
        _, _, _, _, length, index, term = _HEADER.unpack_from(data, at)
        start = at + WAL_HEADER_BYTES
        records.append(Record(index, term, data[start : start + length], at - offset))
        offset = start + length
    return ScanResult(records, offset, reason)


def _header_offset(data: bytes, boundary: int) -> int:
    """Where the header of the record at `boundary` is: there, or after padding when the
    version byte there is zero."""
    return boundary if data[boundary + 4] else boundary + align_pad_bytes(boundary)


def _check(data: bytes, offset: int, index_expected: int, term_before: int) -> str:
    cut_short = "record header cut short by the end of the data"
    if len(data) - offset < WAL_HEADER_BYTES:
        return cut_short
    at = _header_offset(data, offset)
    if len(data) - at < WAL_HEADER_BYTES:
        return cut_short
    crc, version, kind, pad_code, length, index, term = _HEADER.unpack_from(data, at)
    if version != WAL_VERSION:
        return "unknown record version"
    if kind != WAL_TYPE_ENTRY:
        return "unknown record type"
    if pad_code != _pad_code(at - offset):
        return "padding length does not match the header's place"
    if length > WAL_PAYLOAD_BYTES_MAX:
        return "payload length above the limit"
    if len(data) - at < WAL_HEADER_BYTES + length:
        return "record payload cut short by the end of the data"
    if crc32c(data[at + 4 : at + WAL_HEADER_BYTES + length]) != crc:
        return "CRC-32C mismatch"
    if index != index_expected:
        return "index out of sequence"
    if term < term_before:
        return "term lower than the previous record's"
    return "ok"
