"""The core's building blocks: config validation, MemoryStorage, quorum math (checked against
a brute-force model), the in-flight window and the log's fast-backtracking search."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstream.raft import (
    CompactedError,
    ConfigError,
    Entry,
    MemoryStorage,
    RaftConfig,
    SnapshotUnavailableError,
    UnavailableError,
)
from eventstream.raft.log import RaftLog
from eventstream.raft.membership import Membership
from eventstream.raft.progress import Inflights, Progress, ProgressState
from eventstream.raft.quorum import MajorityConfig, VoteResult
from tests.unit.raft.cluster import storage_with_terms


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": 0}, "id"),
        ({"voters": ()}, "voters"),
        ({"voters": (1, 1)}, "duplicates"),
        ({"heartbeat_ticks": 0}, "heartbeat_ticks"),
        ({"election_ticks": 2, "heartbeat_ticks": 2}, "election_ticks"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"max_entry_bytes": 10, "max_uncommitted_bytes": 5}, "max_uncommitted_bytes"),
        ({"snapshot_chunk_bytes": 0}, "snapshot_chunk_bytes"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    args = {"id": 1, "voters": (1, 2, 3), **kwargs}
    with pytest.raises(ConfigError, match=message):
        RaftConfig(**args)


def test_memory_storage_errors_and_compaction() -> None:
    storage = storage_with_terms([1, 1, 2, 3])
    assert (storage.first_index(), storage.last_index()) == (1, 4)
    with pytest.raises(UnavailableError):
        storage.term(5)
    with pytest.raises(SnapshotUnavailableError):
        storage.snapshot()
    with pytest.raises(ValueError, match="no snapshot"):
        storage.compact(2)
    meta = storage.create_snapshot(3, b"image", Membership.of((1, 2, 3)))
    assert (meta.index, meta.term) == (3, 2)
    storage.compact(3)
    assert (storage.first_index(), storage.last_index()) == (4, 4)
    assert storage.term(3) == 2  # the snapshot's term stays readable at first_index - 1
    with pytest.raises(CompactedError):
        storage.term(2)
    with pytest.raises(CompactedError):
        storage.entries(3, 5)
    assert storage.snapshot_chunk(3, 1, 3) == b"mag"
    with pytest.raises(SnapshotUnavailableError):
        storage.snapshot_chunk(2, 0, 3)


def test_memory_storage_entries_size_limit_returns_at_least_one() -> None:
    storage = MemoryStorage()
    storage.append([Entry(i, 1, b"x" * 10) for i in range(1, 6)])
    assert len(storage.entries(1, 6, max_bytes=25)) == 2
    assert len(storage.entries(1, 6, max_bytes=1)) == 1
    assert len(storage.entries(1, 6)) == 5


def test_memory_storage_append_truncates_conflicts_and_refuses_gaps() -> None:
    storage = storage_with_terms([1, 1, 1])
    storage.append([Entry(2, 2, b"n")])
    assert [e.term for e in storage.entries(1, storage.last_index() + 1)] == [1, 2]
    with pytest.raises(UnavailableError):
        storage.append([Entry(9, 2, b"gap")])


@given(st.lists(st.integers(0, 50), min_size=1, max_size=7))
def test_committed_index_matches_brute_force(matches: list[int]) -> None:
    """Differential check against the obvious definition: the largest i acknowledged by at
    least a majority (docs/conventions.md §19)."""
    voters = tuple(range(1, len(matches) + 1))
    config = MajorityConfig(voters)
    acked = dict(zip(voters, matches))
    quorum = len(voters) // 2 + 1
    expected = max(i for i in range(0, 51) if sum(1 for m in matches if m >= i) >= quorum)
    assert config.committed_index(acked) == expected


@given(st.lists(st.sampled_from([True, False, None]), min_size=1, max_size=7))
def test_vote_result_matches_brute_force(answers: list[bool | None]) -> None:
    voters = tuple(range(1, len(answers) + 1))
    votes = {v: a for v, a in zip(voters, answers) if a is not None}
    quorum = len(voters) // 2 + 1
    granted = sum(1 for a in answers if a is True)
    possible = sum(1 for a in answers if a is not False)
    expected = (
        VoteResult.WON
        if granted >= quorum
        else VoteResult.LOST
        if possible < quorum
        else VoteResult.PENDING
    )
    assert MajorityConfig(voters).vote_result(votes) == expected


def test_inflights_window_by_count_and_bytes() -> None:
    window = Inflights(max_count=3, max_bytes=100)
    window.add(5, 10)
    window.add(7, 10)
    assert not window.full()
    window.add(9, 10)
    assert window.full()
    window.free_through(7)
    assert len(window) == 1 and window.bytes == 10 and not window.full()
    window.add(12, 95)
    assert window.full(), "bytes limit reached"


def test_progress_probe_sends_one_message_at_a_time() -> None:
    progress = Progress(next_index=10, max_inflight=4, max_inflight_bytes=1 << 20)
    assert progress.state == ProgressState.PROBE and not progress.is_paused()
    progress.sent_entries(12, 30)
    assert progress.is_paused()
    # A rejection of the outstanding probe (prev index 9) moves next back using the hint.
    assert progress.maybe_decrease_to(9, hint_index=4)
    assert progress.next_index == 5 and not progress.is_paused()
    # A stale rejection (of some earlier prev index) changes nothing.
    assert not progress.maybe_decrease_to(7, hint_index=1)
    assert progress.maybe_update(6)
    progress.become_replicate()
    assert progress.next_index == 7
    for last in (8, 9, 10, 11):
        progress.sent_entries(last, 1)
    assert progress.is_paused() and progress.next_index == 12


def test_find_conflict_by_term_skips_whole_terms() -> None:
    log = RaftLog(storage_with_terms([1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]), 0, 0)
    assert log.find_conflict_by_term(11, 6) == (11, 3)
    assert log.find_conflict_by_term(11, 2) == (6, 2)
    assert log.find_conflict_by_term(11, 1) == (3, 1)
    assert log.find_conflict_by_term(11, 0) == (0, 0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["append", "persist"]),
            st.integers(0, 12),
            st.lists(st.integers(1, 4), min_size=1, max_size=4),
        ),
        max_size=25,
    )
)
def test_raft_log_matches_a_plain_list(operations: list[tuple[str, int, list[int]]]) -> None:
    """Differential check of RaftLog (durable storage + unstable tail) against a plain list of
    terms: appends that replace suffixes, and persisting in between, never change what the
    log reads back."""
    storage = MemoryStorage()
    log = RaftLog(storage, 0, 0)
    model: list[int] = []  # model[i - 1] is the term at index i
    for operation, position, terms in operations:
        if operation == "append":
            first = min(position, len(model)) + 1
            entries = [Entry(first + k, t, b"%d" % t) for k, t in enumerate(terms)]
            log.append(entries)
            del model[first - 1 :]
            model.extend(terms)
        else:
            # What a host does with a Ready: write the unstable tail, then confirm it.
            pending = list(log.unstable)
            if pending:
                storage.append(pending)
                log.stable_to(pending[-1].index, pending[-1].term)
        assert log.last_index() == len(model)
        assert [log.term(i) for i in range(1, len(model) + 1)] == model
        assert [e.term for e in log.entries(1, len(model) + 1)] == model
        if model:
            limited = log.entries(1, len(model) + 1, max_bytes=2)
            assert 1 <= len(limited) <= 2 and [e.term for e in limited] == model[: len(limited)]
