"""SegmentLog against an obviously-correct in-memory model (docs/conventions.md §19): random sequences of
append / append_packed / truncate_after / compact_through / close+reopen must leave the same
entries, terms and first/last index."""

from __future__ import annotations

import array
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventstream.storage import SegmentLog


class LogModel:
    """Invariant: entries[k] is index first + k; prev_term is the term of first - 1."""

    def __init__(self) -> None:
        self.first = 1
        self.prev_term = 0
        self.entries: list[tuple[int, bytes]] = []  # (term, payload)

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1

    @property
    def last_term(self) -> int:
        return self.entries[-1][0] if self.entries else self.prev_term

    def term(self, index: int) -> int:
        return self.prev_term if index == self.first - 1 else self.entries[index - self.first][0]


class SegmentLogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="segment-log-model-")
        self.segment_bytes = 512
        self.log = SegmentLog.open(self.directory, segment_bytes=self.segment_bytes,
                                   wal_sync=False)
        self.model = LogModel()

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    @rule(term_step=st.integers(0, 2), sizes=st.lists(st.integers(0, 120), min_size=1, max_size=12))
    def append(self, term_step: int, sizes: list[int]) -> None:
        term = self.model.last_term + term_step
        first = self.model.last + 1
        batch = [(first + k, term, bytes([(first + k) % 251]) * n) for k, n in enumerate(sizes)]
        self.log.append(batch)
        self.model.entries.extend((term, payload) for _, _, payload in batch)

    @rule(term_step=st.integers(0, 2), sizes=st.lists(st.integers(0, 120), max_size=12))
    def append_packed(self, term_step: int, sizes: list[int]) -> None:
        term = self.model.last_term + term_step
        first = self.model.last + 1
        payloads = [bytes([(first + k) % 251]) * n for k, n in enumerate(sizes)]
        self.log.append_packed(first, term, b"".join(payloads), array.array("I", sizes))
        self.model.entries.extend((term, payload) for payload in payloads)

    @rule(data=st.data())
    def truncate_after(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.model.first - 1, self.model.last + 2))
        self.log.truncate_after(index)
        keep = max(0, index - self.model.first + 1)
        del self.model.entries[keep:]

    @precondition(lambda self: self.model.entries)
    @rule(data=st.data())
    def compact_through(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.model.first, self.model.last))
        term = self.model.term(index)
        self.log.compact_through(index)
        del self.model.entries[: index - self.model.first + 1]
        self.model.first = index + 1
        self.model.prev_term = term

    @rule(gap=st.integers(1, 5), term_step=st.integers(0, 3))
    def install_snapshot_past_the_end(self, gap: int, term_step: int) -> None:
        index = self.model.last + gap
        term = self.model.last_term + term_step
        self.log.compact_through(index, term=term)
        self.model.entries.clear()
        self.model.first = index + 1
        self.model.prev_term = term

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = SegmentLog.open(self.directory, segment_bytes=self.segment_bytes,
                                   wal_sync=False)
        assert self.log.recovery is None

    @invariant()
    def same_bounds(self) -> None:
        assert self.log.first_index == self.model.first
        assert self.log.last_index == self.model.last

    @invariant()
    def same_entries_and_terms(self) -> None:
        model = self.model
        got = self.log.entries(model.first, model.last + 1)
        assert [(t, bytes(p)) for _, t, p in got] == model.entries
        assert [i for i, _, _ in got] == list(range(model.first, model.last + 1))
        for index in range(model.first - 1, model.last + 1):
            assert self.log.term(index) == model.term(index)


SegmentLogMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
TestSegmentLogAgainstModel = SegmentLogMachine.TestCase


class PaddedSegmentLogMachine(SegmentLogMachine):
    """The same model with large records appended alone, which wal_sync=False writes after
    padding (csrc/wal_format.h), in segments that hold a few of them."""

    def __init__(self) -> None:
        super().__init__()
        self.log.close()
        self.segment_bytes = 400_000
        self.log = SegmentLog.open(self.directory, segment_bytes=self.segment_bytes,
                                   wal_sync=False)

    @rule(term_step=st.integers(0, 1), size=st.integers(60_000, 100_000))
    def append_large_alone(self, term_step: int, size: int) -> None:
        term = self.model.last_term + term_step
        index = self.model.last + 1
        payload = bytes([index % 251]) * size
        self.log.append([(index, term, payload)])
        self.model.entries.append((term, payload))


PaddedSegmentLogMachine.TestCase.settings = settings(
    max_examples=20, stateful_step_count=20, deadline=None
)
TestPaddedSegmentLogAgainstModel = PaddedSegmentLogMachine.TestCase
