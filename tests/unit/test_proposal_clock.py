"""The leader's clock for times written into the log (eventstream/node/proposal_clock.py): wall-clock
steps during a term move nothing, a new leader never starts behind the log, and one ahead of it
says by how much."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventstream.node.proposal_clock import ProposalClock
from eventstream.state import (
    StateMachine,
    dedup_cutoffs_us,
    encode_dedup_expire,
    encode_set_event_at,
)
from eventstream.storage.codec import Event

S = 1_000_000_000  # ns


class Clocks:
    """A wall clock that can be stepped and a monotonic clock that only runs."""

    def __init__(self, wall_s: float) -> None:
        self.wall_ns = int(wall_s * S)
        self.mono_ns = 5 * S

    def run(self, seconds: float) -> None:
        self.wall_ns += int(seconds * S)
        self.mono_ns += int(seconds * S)

    def step(self, seconds: float) -> None:
        self.wall_ns += int(seconds * S)

    def clock(self) -> ProposalClock:
        return ProposalClock(lambda: self.wall_ns, lambda: self.mono_ns)


def test_a_wall_clock_step_during_the_term_moves_nothing() -> None:
    clocks = Clocks(1_000)
    clock = clocks.clock()
    assert clock.start_term() == 0
    assert clock.now_us() == 1_000 * 10**6
    clocks.run(2)
    clocks.step(3600)  # NTP steps the wall clock an hour forward
    assert clock.now_us() == 1_002 * 10**6
    assert clock.wall_offset_us() == 3600 * 10**6
    clocks.step(-7200)  # and two hours back: time written into the log never goes back
    clocks.run(1)
    assert clock.now_us() == 1_003 * 10**6
    assert clock.wall_offset_us() == -3600 * 10**6


def test_a_step_cannot_expire_ids_inside_their_window(tmp_path: object) -> None:
    """The defect this clock removes: with the wall clock read directly, an hour's step made the
    next DEDUP_EXPIRE forget ids seen a second before, and their retry was stored twice."""
    clocks = Clocks(1_000)
    clock = clocks.clock()
    clock.start_term()
    machine = StateMachine.open(str(tmp_path))
    try:
        event = Event(b"retry-me", None, None, 0, b"x")
        machine.apply(1, 1, encode_set_event_at(clock.now_us(), [event]))
        clocks.run(1)
        clocks.step(3600)
        cutoffs = dedup_cutoffs_us(clock.now_us(), machine.config)
        assert machine.apply(2, 1, encode_dedup_expire(*cutoffs)).expired_count == 0
        assert machine.dedup.lookup(b"retry-me") is not None
        # What the wall clock alone would have proposed:
        wall_cutoffs = dedup_cutoffs_us(clocks.wall_ns // 1000, machine.config)
        assert wall_cutoffs[0] > 1_000 * 10**6  # past the id's first sight: it would have gone
    finally:
        machine.close()


def test_a_new_leader_behind_the_log_starts_at_the_log() -> None:
    clocks = Clocks(500)  # this node's wall clock is 500 s behind the old leader's
    clock = clocks.clock()
    clock.observe(1_000 * 10**6)  # the newest applied SET_EVENT_AT, just applied
    clocks.run(3)
    assert clock.start_term() == 0
    assert clock.now_us() == 1_003 * 10**6  # the old leader's time carried on, not 503 s


def test_a_new_leader_ahead_of_the_log_says_by_how_much() -> None:
    clocks = Clocks(1_100)
    clock = clocks.clock()
    clock.observe(1_000 * 10**6)
    clocks.run(2)
    assert clock.start_term() == 100 * 10**6
    assert clock.now_us() == 1_102 * 10**6  # it trusts its own clock, and the node logs the gap


def test_entries_found_on_disk_raise_the_floor_but_report_no_gap() -> None:
    """After the whole cluster was down for 600 s, the newest entry a restarted node replays is
    600 s old: the log's time starts no lower than it, but that is downtime, not a clock gap."""
    clocks = Clocks(1_600)
    clock = clocks.clock()
    clock.observe(1_000 * 10**6, live=False)
    clocks.run(1)
    assert clock.log_floor_us() == 1_001 * 10**6
    assert clock.start_term() == 0
    assert clock.now_us() == 1_601 * 10**6
    clock.end_term()
    clocks.run(1)
    clock.observe(1_502 * 10**6)  # then one arrives from a leader 100 s behind this node
    assert clock.start_term() == 100 * 10**6


def test_observed_times_only_raise_the_floor() -> None:
    clocks = Clocks(0)
    clock = clocks.clock()
    assert clock.log_floor_us() is None
    clock.observe(2_000)
    clock.observe(1_000)  # an older time applied later (a lagging leader's entry) lowers nothing
    clocks.run(1)
    assert clock.log_floor_us() == 2_000 + 10**6


def test_now_never_decreases_across_terms() -> None:
    clocks = Clocks(1_000)
    clock = clocks.clock()
    clock.start_term()
    clocks.run(10)
    first = clock.now_us()
    clock.end_term()
    clocks.step(-100)  # stepped back between terms, with no newer entry applied
    clock.start_term()
    assert clock.now_us() >= first



actions = st.lists(
    st.one_of(
        st.tuples(st.just("run"), st.floats(0, 100)),
        st.tuples(st.just("step"), st.floats(-7200, 7200)),
        st.tuples(st.just("observe"), st.floats(-3600, 3600)),  # an entry's time, off the wall clock
        st.tuples(st.just("term"), st.just(0.0)),
    ),
    max_size=40,
)


@given(actions)
def test_log_time_never_goes_back_and_steps_never_move_it_within_a_term(steps: list[tuple[str, float]]) -> None:
    clocks = Clocks(1_000_000)
    clock = clocks.clock()
    clock.start_term()
    last = term_start_us = clock.now_us()
    term_mono_ns = clocks.mono_ns
    for kind, amount in steps:
        if kind == "run":
            clocks.run(amount)
        elif kind == "step":
            before = clock.now_us()
            clocks.step(amount)
            assert clock.now_us() == before  # a wall-clock step moves nothing during a term
        elif kind == "observe":
            clock.observe(clocks.wall_ns // 1000 + int(amount * 10**6))
        else:
            clock.end_term()
            floor = clock.log_floor_us()
            clock.start_term()
            term_start_us, term_mono_ns = clock.now_us(), clocks.mono_ns
            assert floor is None or term_start_us >= floor  # a term never starts behind the log
        now = clock.now_us()
        assert now >= last
        assert now >= term_start_us + (clocks.mono_ns - term_mono_ns) // 1000  # runs with the monotonic clock
        last = now
