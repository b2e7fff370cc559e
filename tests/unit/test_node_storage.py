"""RecentEntries (eventstream/node/raft_storage.py): the in-memory tail of the log must equal the log."""

from hypothesis import given
from hypothesis import strategies as st

from eventstream.node.raft_storage import RecentEntries
from eventstream.raft.messages import Entry


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=6), st.integers(min_value=1, max_value=5),
                          st.integers(min_value=1, max_value=40)), min_size=1, max_size=30),
       st.integers(min_value=1, max_value=200))
def test_recent_entries_serve_exactly_the_logs_tail(writes: list[tuple[int, int, int]], bytes_max: int) -> None:
    recent = RecentEntries(bytes_max)
    log: list[Entry] = []  # the model: index i + 1 at position i
    term = 1
    for back, count, size in writes:
        # Write `count` entries replacing the last `back` (a conflicting suffix, §5.3).
        start = max(1, len(log) + 1 - back)
        term += 1
        new = [Entry(start + k, term, bytes([k % 256]) * size) for k in range(count)]
        del log[start - 1:]
        log.extend(new)
        recent.written(new)
        assert recent.nbytes == sum(len(e.data) for e in recent.entries)
        assert recent.nbytes <= bytes_max or len(recent.entries) == 1
        for lo in range(1, len(log) + 1):
            for hi in range(lo + 1, len(log) + 2):
                got = recent.get(lo, hi, None)
                if got is not None:
                    assert got == log[lo - 1:hi - 1]
                limited = recent.get(lo, hi, size)
                if limited is not None:
                    assert limited and limited == log[lo - 1:lo - 1 + len(limited)]
                    assert len(limited) == 1 or sum(len(e.data) for e in limited) <= size
    # The newest entry is always held.
    assert recent.get(len(log), len(log) + 1, None) == log[-1:]
