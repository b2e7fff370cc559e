"""The leader's clock for the times it writes into the log.

Two things in the log are times the leader reads off a clock: SET_EVENT_AT's first-seen time
(the dedup window of every id in the entry runs from it, and age retention clamps events
stamped past it) and DEDUP_EXPIRE's cut-offs (its time minus each window). Read straight off
the wall clock, a step forward during a term (NTP correcting a drifted clock, an operator's
`date -s`) would move the cut-offs forward at once and forget ids before their window ran out:
a retry within the window would then be stored twice.

So a leader reads the wall clock once, when its term begins, and from then on advances that
reading by the monotonic clock, which no step moves. It also never starts behind the log: a
follower notes, for the newest SET_EVENT_AT it applied, the time written in it and when (on
its monotonic clock) it applied it; that time plus the monotonic time since is a lower bound
of the previous leader's clock now, and a new leader starts there if its wall clock is behind.

What this does not cover: a new leader whose wall clock is AHEAD of its predecessor's starts
ahead by the difference, and ids first seen under the predecessor expire that much early. A
forward step during a term is such a difference at the next election (the log's time has to
meet the wall clock again somewhere). `start_term` returns the difference so the node can log
it; keep the nodes' clocks in step.
"""

from __future__ import annotations

from collections.abc import Callable

from eventstream.node.clock import SYSTEM_CLOCK

# A gap smaller than this between two clocks is the ordinary difference of two readings (apply
# delay, scheduling), not worth a log line.
CLOCK_GAP_NOTED_US = 1_000_000


class ProposalClock:
    def __init__(self, wall_ns: Callable[[], int] = SYSTEM_CLOCK.wall_ns,
                 monotonic_ns: Callable[[], int] = SYSTEM_CLOCK.monotonic_ns) -> None:
        self._wall_ns = wall_ns
        self._monotonic_ns = monotonic_ns
        self._anchor_us: int | None = None  # the term's start, on the log's time line
        self._anchor_mono_ns = 0
        self._last_us = 0
        self._seen_us: int | None = None  # newest time read from an applied entry
        self._seen_mono_ns = 0
        self._seen_live = False

    def observe(self, logged_us: int, live: bool = True) -> None:
        """An applied SET_EVENT_AT carried `logged_us` (its leader's clock at proposal). live is
        False for an entry this process found already written on disk, received only after
        its leader had committed it, or applied right after a long silence from the leader (a
        follower catching up; PeerRouting.step): it was proposed an unknown time
        before it was applied, so it still bounds the log's time from below but says nothing
        about how far apart two nodes' clocks are."""
        if self._seen_us is None or logged_us >= self._seen_us:
            self._seen_us = logged_us
            self._seen_mono_ns = self._monotonic_ns()
            self._seen_live = live

    def log_floor_us(self) -> int | None:
        """A lower bound of the clock of the leader that wrote the newest applied entry, now."""
        if self._seen_us is None:
            return None
        return self._seen_us + (self._monotonic_ns() - self._seen_mono_ns) // 1000

    def start_term(self) -> int:
        """This node became leader: anchor the log's time line. Returns how far (us) this node's
        wall clock is ahead of the log's floor (0 when it is not, or when no floor from an entry
        applied as it arrived is known: after a restart of the whole cluster the floor lags the
        wall clock by the downtime, which is no difference between clocks)."""
        wall_us = self._wall_ns() // 1000
        floor = self.log_floor_us()
        # Never behind the log, nor behind what this node already wrote (its wall clock may
        # have stepped back since): the log's time then runs on from there, not stalled.
        self._anchor_us = max(wall_us, self._last_us, floor if floor is not None else wall_us)
        self._anchor_mono_ns = self._monotonic_ns()
        return wall_us - floor if floor is not None and self._seen_live and wall_us > floor else 0

    def end_term(self) -> None:
        self._anchor_us = None

    def now_us(self) -> int:
        """The time to write into the log now: never decreasing, unmoved by wall-clock steps
        during the term."""
        if self._anchor_us is None:
            self.start_term()
        assert self._anchor_us is not None
        now = self._anchor_us + (self._monotonic_ns() - self._anchor_mono_ns) // 1000
        self._last_us = max(self._last_us, now)
        return self._last_us

    def wall_offset_us(self) -> int:
        """How far the wall clock now is from the time now_us() gives (a step since the term
        began shows here)."""
        return self._wall_ns() // 1000 - self.now_us()
