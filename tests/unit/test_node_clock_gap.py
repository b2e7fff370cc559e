"""What a new leader reports as the gap between its clock and its predecessor's
(eventstream/node/routing.py with proposal_clock.py): only entries a follower received while they were
new measure that gap; entries sent to catch it up, or held up by a cut link, were proposed an
unknown time earlier."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from eventstream.config import NodeConfig
from eventstream.node import Node
from eventstream.node.clock import ManualClock
from eventstream.node.proposal_clock import CLOCK_GAP_NOTED_US
from eventstream.raft.messages import Entry, Message, MessageType
from eventstream.state import encode_set_event_at
from eventstream.storage.codec import Event

LEADER = 2
PEERS = {1: "127.0.0.1:7101", 2: "127.0.0.1:7102", 3: "127.0.0.1:7103"}
BEHIND_S = 30  # the predecessor's entries carry times this far behind this node's wall clock


# An election timeout of 100 ms, so that the window after a silence (twice that) is short.
TICK_MS, ELECTION_TICKS = 20, 5
SILENCE_S = TICK_MS * ELECTION_TICKS / 1000


def _follower(tmp_path: Path) -> Node:
    node = Node(NodeConfig(id=1, listen=PEERS[1], peers=PEERS, data_dir=str(tmp_path),
                           tick_ms=TICK_MS, election_ticks=ELECTION_TICKS, heartbeat_ticks=1),
                clock=ManualClock(wall_s=time.time()))
    return node


def _in_contact(node: Node, seconds: float) -> None:
    """The leader's heartbeats, well within the election timeout, for `seconds`."""
    clock = _clock(node)
    ends = clock.monotonic() + seconds
    while clock.monotonic() < ends:
        _receive(node, [Message(MessageType.HEARTBEAT, 1, LEADER, 1)])
        clock.advance(SILENCE_S / 5)


def _clock(node: Node) -> ManualClock:
    """The node's clock, which these tests move instead of sleeping."""
    assert isinstance(node.clock, ManualClock)
    return node.clock


def _entries(first: int, last: int, logged_us: int) -> list[Entry]:
    return [Entry(i, 1, encode_set_event_at(logged_us + i, [Event(b"id-%d" % i, None, None, 0, b"e%d" % i)]))
            for i in range(first, last + 1)]


def _receive(node: Node, messages: list[Message]) -> None:
    """Step the messages and carry out every Ready, as the node's ready loop does."""
    raft = node.raft
    assert raft is not None

    async def run() -> None:
        node.routing.step(LEADER, messages)
        while raft.has_ready():
            rd = raft.ready()
            durable = node.executor.carry_out(rd)
            raft.advance(rd, durable=durable)

    node.routing.send = lambda messages: None  # type: ignore[method-assign]  # no peers to answer
    asyncio.run(run())


def _append(entries: list[Entry], prev: int, commit: int) -> Message:
    return Message(MessageType.APPEND, 1, LEADER, 1, index=prev, log_term=1 if prev else 0, entries=entries, commit=commit)


def test_entries_sent_after_their_commit_do_not_count_as_a_clock_gap(tmp_path: Path) -> None:
    # A follower back from a partition: the leader sends what it committed meanwhile, all of
    # it proposed long before it arrives here.
    node = _follower(tmp_path)
    logged = _clock(node).wall_ns() // 1000 - BEHIND_S * 10**6
    _receive(node, [_append(_entries(1, 40, logged), 0, 40)])
    assert node.state is not None and node.state.applied_index == 40
    assert node.proposal_clock.start_term() == 0
    node.seg_log.close()  # type: ignore[union-attr]


def test_entries_received_before_their_commit_measure_the_gap(tmp_path: Path) -> None:
    # The same times, on entries that arrived while the leader still waited for their commit:
    # the predecessor's clock really is that far behind this node's.
    node = _follower(tmp_path)
    _in_contact(node, 4 * SILENCE_S)  # past the window that the first contact opens
    logged = _clock(node).wall_ns() // 1000 - BEHIND_S * 10**6
    _receive(node, [_append(_entries(1, 40, logged), 0, 0)])
    _receive(node, [_append([], 40, 40)])
    assert node.state is not None and node.state.applied_index == 40
    ahead_us = node.proposal_clock.start_term()
    assert ahead_us > CLOCK_GAP_NOTED_US
    assert abs(ahead_us - BEHIND_S * 10**6) < 5 * 10**6
    node.seg_log.close()  # type: ignore[union-attr]


def test_a_catch_up_ending_in_new_entries_measures_the_gap_from_those(tmp_path: Path) -> None:
    # Caught up on old entries, then new ones arrive from a leader whose clock matches ours.
    node = _follower(tmp_path)
    now = _clock(node).wall_ns() // 1000
    _receive(node, [_append(_entries(1, 20, now - BEHIND_S * 10**6), 0, 20)])
    _in_contact(node, 4 * SILENCE_S)
    _receive(node, [_append(_entries(21, 30, now), 20, 20)])
    _receive(node, [_append([], 30, 30)])
    assert node.state is not None and node.state.applied_index == 30
    assert 0 <= node.proposal_clock.start_term() < CLOCK_GAP_NOTED_US
    node.seg_log.close()  # type: ignore[union-attr]


def test_entries_that_end_a_silence_do_not_count_as_a_clock_gap(tmp_path: Path) -> None:
    # A cut link heals: what the leader sent meanwhile arrives at once, each message with the
    # commit index of when it was sent, so its entries look new although they are not.
    node = _follower(tmp_path)
    _in_contact(node, 4 * SILENCE_S)
    _clock(node).advance(3 * SILENCE_S)
    logged = _clock(node).wall_ns() // 1000 - BEHIND_S * 10**6
    _receive(node, [_append(_entries(1, 40, logged), 0, 0)])
    _receive(node, [_append([], 40, 40)])
    assert node.state is not None and node.state.applied_index == 40
    assert node.proposal_clock.start_term() == 0
    node.seg_log.close()  # type: ignore[union-attr]
