import array
import threading
from collections.abc import Iterable
from typing import Any

from typing_extensions import Buffer

WAL_VERSION: int
WAL_TYPE_ENTRY: int
WAL_HEADER_BYTES: int
WAL_PAYLOAD_BYTES_MAX: int
WAL_PAYLOAD_ALIGN_BYTES: int
WAL_ALIGN_PAYLOAD_BYTES_MIN: int
SPARSE_STRIDE: int

class PreparedRecords:
    count: int
    first_index: int
    last_term: int
    payload_bytes: int
    term_starts: list[tuple[int, int]]
    def frame(self, start: int, room_bytes: int, force_first: bool, segment_records: int,
              segment_offset: int) -> tuple[bytes, int, bytes]: ...

class SegmentFile:
    path: str
    first_index: int
    count: int
    size: int
    fd: int
    sparse: array.array[int]
    zero_fill: bool
    def __init__(self, path: str, first_index: int, fd: int) -> None: ...
    @property
    def last_index(self) -> int: ...
    def locate(self, index: int) -> tuple[int, int]: ...
    def end_offset(self, index_end: int) -> int: ...
    def keep_records(self, count: int, size: int) -> None: ...
    def release_preallocation(self) -> None: ...
    def write(self, prepared: PreparedRecords, start: int, segment_bytes: int,
              align_alone: bool) -> int: ...

class LogTail:
    _active: SegmentFile | None
    _last_index: int
    _last_term: int
    _written_seq: int
    _records_appended: int
    _bytes_appended: int
    _segment_bytes: int
    _align_payloads: bool
    _lock: threading.Lock
    _closed: bool
    _failure: BaseException | None
    @property
    def last_index(self) -> int: ...
    def append_nowait(self, records: Iterable[tuple[int, int, Any]]) -> int: ...
    def _write_prepared(self, prepared: PreparedRecords) -> int: ...

def prepare_records(records: Iterable[tuple[int, int, Any]], next_index: int,
                    prev_term: int) -> PreparedRecords: ...
def prepare_packed(first_index: int, term: int, prev_term: int, buffer: Buffer,
                   lengths: Buffer) -> PreparedRecords: ...
def scan_records(data: Buffer, first_index: int, prev_term: int
                 ) -> tuple[int, int, int, list[tuple[int, int]], bytes, int, str]: ...
def read_records(data: Buffer, first_index: int, lo: int, hi: int, budget_bytes: int,
                 taken_bytes: int, taken_any: bool, path: str, file_offset: int
                 ) -> tuple[list[tuple[int, int, memoryview]], int, int, int, bool, int]: ...
