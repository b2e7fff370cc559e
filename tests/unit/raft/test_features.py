"""Protocol features beyond the core paper: pre-vote, check-quorum, ReadIndex, snapshots,
leadership transfer, bounded proposals, and the Ready ordering contract."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest

from eventstream.node.snapshot_policy import POSTPONE_FACTOR, snapshot_due
from eventstream.raft import (
    NONE,
    Entry,
    EntryTooLargeError,
    MalformedMessageError,
    Message,
    MessageType,
    NotLeaderError,
    RaftConfig,
    RaftNode,
    Ready,
    Role,
    TransferInProgressError,
    UncommittedLimitError,
)
from eventstream.raft.progress import ProgressState
from eventstream.raft.storage import MemoryStorage
from tests.sim.host import MemoryHost
from tests.unit.raft.cluster import Cluster

MT = MessageType


def tick_until(cluster: Cluster, node_id: int, ticks: int) -> None:
    for _ in range(ticks):
        cluster.node(node_id).tick()
        cluster.stabilize()


# ---------------------------------------------------------------- pre-vote and check-quorum


@pytest.mark.parametrize("pre_vote", [True, False])
def test_rejoining_node_disrupts_leader_only_without_prevote(pre_vote: bool) -> None:
    """Thesis §9.6: a node partitioned away keeps timing out. With pre-vote it never bumps its
    term, so when it rejoins the healthy leader keeps its term and leadership; without it,
    its inflated term deposes the leader."""
    cluster = Cluster((1, 2, 3), pre_vote=pre_vote, check_quorum=pre_vote)
    cluster.elect(1)
    term = cluster.node(1).term
    cluster.cut = {3}
    tick_until(cluster, 3, 100)
    assert (cluster.node(3).term == term) == pre_vote
    cluster.cut = set()
    for _ in range(2 * cluster.node(3).config.election_ticks):
        for node_id in cluster.ids:
            cluster.node(node_id).tick()
        cluster.stabilize()
    if pre_vote:
        assert cluster.node(1).role == Role.LEADER and cluster.node(1).term == term
    else:
        assert cluster.node(1).term > term


def test_check_quorum_leader_steps_down_when_isolated() -> None:
    """Thesis §6.2: "a leader steps down if an election timeout elapses without a successful
    round of heartbeats to a majority of its cluster"."""
    cluster = Cluster((1, 2, 3), check_quorum=True)
    cluster.elect(1)
    cluster.cut = {1}
    leader = cluster.node(1)
    for _ in range(2 * leader.config.election_ticks):
        leader.tick()
        cluster.stabilize()
    assert leader.role == Role.FOLLOWER
    assert leader.leader == NONE


def test_lease_ignores_vote_requests_while_leader_is_alive() -> None:
    """Thesis §4.2.3: a server that heard from the leader within the election timeout ignores
    RequestVote, so a node with a higher term cannot disrupt a working cluster."""
    cluster = Cluster((1, 2, 3), pre_vote=False, check_quorum=True)
    cluster.elect(1)
    term = cluster.node(1).term
    # Node 3 campaigns with a higher term without waiting for a timeout.
    cluster.node(3).campaign()
    cluster.stabilize()
    assert cluster.node(3).term == term + 1
    assert cluster.node(1).role == Role.LEADER and cluster.node(1).term == term
    assert cluster.node(2).term == term and cluster.node(2).vote == 1


# ---------------------------------------------------------------- ReadIndex


def test_read_index_on_leader_needs_heartbeat_quorum() -> None:
    """Thesis §6.4: the leader records its commit index, confirms it is still leader with a
    round of heartbeats to a majority, then the read is served at that index."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    index = cluster.node(1).propose(b"w")
    cluster.stabilize()
    cluster.node(1).read_index(b"ctx")
    cluster.cut = {2, 3}
    cluster.stabilize()
    assert cluster.hosts[1].read_states == []
    cluster.cut = set()
    cluster.node(1).read_index(b"ctx2")
    cluster.stabilize()
    assert [(r.index, r.context) for r in cluster.hosts[1].read_states] == [
        (index, b"ctx"),
        (index, b"ctx2"),
    ]


def test_read_index_forwarded_from_follower() -> None:
    """Thesis §6.4: a follower asks the leader for its read index and serves the read locally
    once it has applied that far."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    index = cluster.node(1).propose(b"w")
    cluster.stabilize()
    cluster.node(2).read_index(b"f")
    cluster.stabilize()
    (state,) = cluster.hosts[2].read_states
    assert state.context == b"f" and state.index == index
    assert cluster.hosts[2].applied >= state.index


def test_read_index_waits_for_first_commit_of_term() -> None:
    """§8: a new leader does not know the commit index until its no-op commits; reads wait."""
    cluster = Cluster((1, 2, 3))
    cluster.node(1).campaign()
    cluster.stabilize(keep=lambda m: m.type != MT.APPEND_RESPONSE)
    leader = cluster.node(1)
    assert leader.role == Role.LEADER
    leader.read_index(b"early")
    cluster.stabilize(keep=lambda m: m.type != MT.APPEND_RESPONSE)
    assert cluster.hosts[1].read_states == []
    leader.tick()
    cluster.stabilize()
    assert [r.context for r in cluster.hosts[1].read_states] == [b"early"]


def test_read_index_without_leader_raises() -> None:
    cluster = Cluster((1, 2, 3))
    with pytest.raises(NotLeaderError):
        cluster.node(2).read_index(b"x")


def test_reads_dropped_on_leadership_loss_are_reported() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.cut = {2, 3}
    leader = cluster.node(1)
    leader.read_index(b"lost")
    for _ in range(2 * leader.config.election_ticks):
        leader.tick()
    rd = leader.ready()
    assert leader.role == Role.FOLLOWER
    assert rd.dropped_reads == [b"lost"]
    leader.advance(rd)


# ---------------------------------------------------------------- snapshots


def _leader_past_a_cut_follower(cluster: Cluster, entries: int) -> MemoryHost:
    """Node 1 leads, commits `entries` entries while node 3 is cut off, snapshots and compacts
    them away (node 3 stays cut): node 3 now needs a snapshot. Returns the leader's host."""
    cluster.elect(1)
    cluster.cut = {3}
    leader_host = cluster.hosts[1]
    for i in range(entries):
        cluster.node(1).propose(b"v%d" % i)
        cluster.stabilize()
    leader_host.take_snapshot()
    cluster.stabilize()
    cluster.node(1).compact(leader_host.applied)
    cluster.stabilize()
    return leader_host


def test_lagging_follower_catches_up_by_chunked_snapshot() -> None:
    """§7: "the leader must occasionally send snapshots to followers that lag behind ... when
    the leader has already discarded the next log entry that it needs to send"; the snapshot
    travels in chunks (Figure 13 InstallSnapshot: offset, data, done)."""
    cluster = Cluster((1, 2, 3), snapshot_chunk_bytes=50)
    leader_host = _leader_past_a_cut_follower(cluster, 10)
    applied = leader_host.applied
    assert leader_host.storage.first_index() == applied + 1
    cluster.cut = set()
    cluster.delivered.clear()
    cluster.node(1).tick()
    cluster.stabilize()
    chunks = [m for m in cluster.delivered if m.type == MT.SNAPSHOT]
    assert len(chunks) >= 4, "the 200+ byte image must travel in 50-byte chunks"
    assert chunks[-1].done and not any(m.done for m in chunks[:-1])
    follower = cluster.hosts[3]
    assert follower.applied == applied
    assert follower.digest == leader_host.digest
    assert follower.storage.first_index() == applied + 1
    # Replication continues normally after the snapshot.
    index = cluster.node(1).propose(b"after")
    cluster.stabilize()
    assert follower.applied == index
    assert cluster.node(1).progress[3].state == ProgressState.REPLICATE


def test_snapshot_chunk_lost_is_resent() -> None:
    cluster = Cluster((1, 2, 3), snapshot_chunk_bytes=50)
    cluster.elect(1)
    cluster.cut = {3}
    for i in range(5):
        cluster.node(1).propose(b"v%d" % i)
        cluster.stabilize()
    cluster.hosts[1].take_snapshot()
    cluster.stabilize()
    cluster.node(1).compact(cluster.hosts[1].applied)
    cluster.stabilize()
    cluster.cut = set()
    dropped: list[Any] = []

    def drop_second_chunk(m):
        if m.type == MT.SNAPSHOT and m.offset == 50 and not dropped:
            dropped.append(m)
            return False
        return True

    cluster.node(1).tick()
    cluster.stabilize(keep=drop_second_chunk)
    assert dropped
    assert cluster.hosts[3].applied < cluster.hosts[1].applied
    for _ in range(3):
        cluster.node(1).tick()
        cluster.stabilize()
    assert cluster.hosts[3].applied == cluster.hosts[1].applied


def test_a_second_snapshot_waits_until_the_first_is_installed() -> None:
    """Two snapshots reaching a follower before its host handles a Ready (a real host steps
    every message that arrived first): the Ready carries the first, accepted, and ends with its
    final chunk; the second is refused from offset 0 and is accepted once the first is in. A
    host staging by offset would otherwise install the second image under the first's metadata."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    follower = cluster.node(3)
    term = follower.term

    def chunk(index: int) -> Message:
        return Message(MT.SNAPSHOT, to=3, sender=1, term=term, index=index, log_term=term,
                       voters=(1, 2, 3), offset=0, data=b"image-%d" % index, done=True)

    follower.step(chunk(20))
    follower.step(chunk(30))
    rd = follower.ready()
    assert rd.snapshot is not None and rd.snapshot.index == 20
    assert [c.meta.index for c in rd.snapshot_chunks] == [20] and rd.snapshot_chunks[-1].done
    refused = [m for m in rd.messages + rd.persisted_messages if m.type == MT.SNAPSHOT_RESPONSE]
    assert [(m.index, m.offset, m.reject) for m in refused] == [(30, 0, True)]
    follower.advance(rd)
    follower.step(chunk(30))
    rd = follower.ready()
    assert rd.snapshot is not None and rd.snapshot.index == 30
    assert [c.meta.index for c in rd.snapshot_chunks] == [30]


def test_compact_beyond_applied_is_refused() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    with pytest.raises(ValueError, match="applied"):
        cluster.node(1).compact(cluster.hosts[1].applied + 1)


# ---------------------------------------------------------------- leadership transfer


def test_leadership_transfer_catches_up_target_then_hands_over() -> None:
    """Thesis §3.10: the leader stops accepting proposals, brings the target's log up to date,
    then sends TimeoutNow; the target starts an election at once and wins."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.cut = {3}
    index = cluster.node(1).propose(b"x")
    cluster.stabilize()
    cluster.cut = set()
    leader = cluster.node(1)
    leader.transfer_leadership(3)
    with pytest.raises(TransferInProgressError):
        leader.propose(b"y")
    cluster.stabilize()
    leader.tick()
    cluster.stabilize()
    assert cluster.node(3).role == Role.LEADER
    assert leader.role == Role.FOLLOWER
    assert cluster.hosts[3].applied >= index
    assert cluster.count(MT.TIMEOUT_NOW, sender=1) == 1


def test_transfer_abandoned_after_election_timeout() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.cut = {3}
    leader = cluster.node(1)
    leader.transfer_leadership(3)
    tick_until(cluster, 1, leader.config.election_ticks)
    # Node 2 still answers, so the leader keeps its role; the transfer is given up.
    assert leader.role == Role.LEADER
    assert leader.lead_transferee == NONE
    leader.propose(b"accepted again")


def test_transfer_to_non_voter_is_refused() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    with pytest.raises(ValueError):
        cluster.node(1).transfer_leadership(9)
    with pytest.raises(NotLeaderError):
        cluster.node(2).transfer_leadership(3)


# ---------------------------------------------------------------- bounded proposals


def test_propose_on_follower_names_the_leader() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    with pytest.raises(NotLeaderError) as info:
        cluster.node(2).propose(b"x")
    assert info.value.leader == 1
    assert "node 1" in str(info.value)


def test_propose_too_large_entry() -> None:
    cluster = Cluster((1, 2, 3), max_entry_bytes=10, max_uncommitted_bytes=30)
    cluster.elect(1)
    with pytest.raises(EntryTooLargeError):
        cluster.node(1).propose(b"x" * 11)
    assert cluster.node(1).log.last_index() == 1


def test_uncommitted_tail_is_bounded_and_frees_on_commit() -> None:
    cluster = Cluster((1, 2, 3), max_entry_bytes=10, max_uncommitted_bytes=30)
    cluster.elect(1)
    cluster.cut = {2, 3}
    leader = cluster.node(1)
    for _ in range(3):
        leader.propose(b"x" * 10)
    last = leader.log.last_index()
    with pytest.raises(UncommittedLimitError):
        leader.propose(b"y")
    assert leader.log.last_index() == last, "a refused proposal appends nothing"
    cluster.cut = set()
    leader.tick()
    cluster.stabilize()
    assert leader.log.committed == last
    leader.propose(b"y")


# ---------------------------------------------------------------- Ready contract


def test_leader_sends_appends_before_its_own_write() -> None:
    """Thesis §10.2.1: the leader's AppendEntries go in Ready.messages (send now) while
    followers' acknowledgements wait in persisted_messages."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.node(1).propose(b"x")
    rd = cluster.node(1).ready()
    assert rd.entries and rd.must_sync
    assert {m.type for m in rd.messages} == {MT.APPEND}
    assert not rd.persisted_messages
    cluster.hosts[1].carry_out(rd, send=lambda m: None)  # its messages are delivered below
    cluster.node(1).advance(rd)
    for m in rd.messages:
        cluster.node(m.to).step(m)
    follower_rd = cluster.node(2).ready()
    assert not follower_rd.messages
    assert [m.type for m in follower_rd.persisted_messages] == [MT.APPEND_RESPONSE]
    cluster.node(2).advance(follower_rd)


def test_commit_only_change_does_not_need_sync() -> None:
    """Ready.must_sync is False when only the commit index moved: losing it in a crash is
    harmless, so the host may skip the fdatasync."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.node(1).propose(b"x")
    # Lose the empty appends that would tell followers about the new commit index.
    cluster.stabilize(keep=lambda m: not (m.type == MT.APPEND and not m.entries))
    leader = cluster.node(1)
    follower = cluster.node(2)
    assert follower.log.committed < leader.log.committed
    leader.tick()
    for m in leader.ready().messages:
        if m.to == 2:
            follower.step(m)
    rd = follower.ready()
    assert rd.hard_state is not None and rd.hard_state.commit == leader.log.committed
    assert not rd.entries and not rd.must_sync
    follower.advance(rd)


def test_committed_entries_per_ready_are_bounded() -> None:
    """max_apply_bytes caps one Ready's committed_entries, so a node catching up applies in
    bounded steps."""
    cluster = Cluster((1, 2, 3), max_apply_bytes=25, max_entry_bytes=10)
    cluster.elect(1)
    cluster.cut = {3}
    for i in range(6):
        cluster.node(1).propose(b"%010d" % i)
    cluster.stabilize()
    cluster.cut = set()
    cluster.node(1).tick()
    applied_bytes_per_ready = []
    for _ in range(100):
        moved = False
        for node_id in cluster.ids:
            rd = cluster.hosts[node_id].handle_ready(cluster.send)
            if rd is None:
                continue
            moved = True
            if node_id == 3 and rd.committed_entries:
                applied_bytes_per_ready.append(sum(len(e.data) for e in rd.committed_entries))
        if not moved and not cluster.queue:
            break
        cluster.deliver()
    assert cluster.hosts[3].applied == cluster.hosts[1].applied
    assert max(applied_bytes_per_ready) <= 25
    assert len(applied_bytes_per_ready) >= 3


def test_entry_data_may_be_a_memoryview() -> None:
    """Entries' data is opaque: a memoryview over a storage buffer passes through uncopied."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    buffer = bytearray(b"....payload....")
    view = memoryview(buffer)[4:11]
    index = cluster.node(1).propose(view)  # type: ignore[arg-type]  # typed bytes; any buffer passes
    cluster.stabilize()
    assert all(h.applied == index for h in cluster.hosts.values())
    stored = cluster.hosts[1].storage.entries(index, index + 1)[0].data
    assert stored is view


def test_malformed_messages_are_refused_without_change() -> None:
    cluster = Cluster((1, 2, 3))
    node = cluster.node(2)
    with pytest.raises(MalformedMessageError, match="delivered to node 2"):
        node.step(Message(MT.APPEND, 3, 1, 1))
    gap = Message(MT.APPEND, 2, 1, 1, index=0, log_term=0, entries=[Entry(5, 1, b"x")])
    with pytest.raises(MalformedMessageError, match="contiguously"):
        node.step(gap)
    assert node.term == 0 and node.log.last_index() == 0


def test_ready_twice_without_advance_is_an_error() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.node(1).ready()
    with pytest.raises(RuntimeError):
        cluster.node(1).ready()


# ---------------------------------------------------------------- deferred leader sync


def _leader_ready_deferred(cluster: Cluster, leader: int) -> tuple[int, int]:
    """Carry out the leader's Ready but report its write as not yet durable; returns the last
    written (index, term)."""
    host = cluster.hosts[leader]
    node = host.node
    rd = node.ready()
    host.carry_out(rd, cluster.send)
    node.advance(rd, durable=False)
    last = rd.entries[-1]
    return last.index, last.term


def test_deferred_leader_write_counts_toward_commit_only_once_persisted() -> None:
    """Thesis §10.2.1: the leader may write in parallel with replication but counts itself
    only once its write is durable. With one follower cut, commit waits for persisted()."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.cut.add(3)
    leader = cluster.node(1)
    commit_before = leader.log.committed
    leader.propose(b"x")
    index, term = _leader_ready_deferred(cluster, 1)
    for _ in range(5):
        cluster.deliver()
        cluster.process_ready(2)
    cluster.deliver()
    assert leader.log.committed == commit_before  # node 2's ack alone is not a majority
    leader.persisted(index, term + 1)  # a report for another entry at that index: ignored
    assert leader.log.committed == commit_before
    leader.persisted(index, term)
    assert leader.log.committed == index


def test_deferred_leader_write_commits_on_two_follower_acks() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    leader = cluster.node(1)
    leader.propose(b"x")
    index, _ = _leader_ready_deferred(cluster, 1)
    for _ in range(5):
        cluster.deliver()
        cluster.process_ready(2)
        cluster.process_ready(3)
    cluster.deliver()
    assert leader.log.committed == index  # a majority without the leader's own copy


def test_deferred_write_is_refused_outside_a_leader() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    follower = cluster.node(2)
    follower.campaign()
    rd = follower.ready()
    with pytest.raises(ValueError, match="only for a leader"):
        follower.advance(rd, durable=False)


# ---------------------------------------------------------------- lazy commit broadcast


def test_lazy_commit_rides_on_the_next_entries_or_the_next_tick() -> None:
    cluster = Cluster((1, 2, 3), lazy_commit=True)
    cluster.elect(1)
    leader, follower = cluster.node(1), cluster.node(2)
    leader.propose(b"a")
    cluster.stabilize()
    index = leader.log.committed
    assert leader.log.last_index() == index
    # Committed on the leader, but no empty AppendEntries went out just to say so.
    assert follower.log.committed < index
    assert not [m for m in cluster.delivered[-4:] if m.type == MT.APPEND and not m.entries]
    # The next proposal's AppendEntries carries it...
    leader.propose(b"b")
    cluster.process_ready(1)
    carried = [m for m in cluster.queue if m.type == MT.APPEND and m.to == 2]
    assert carried and carried[0].entries and carried[0].commit == index
    cluster.stabilize()
    assert follower.log.committed >= index
    # ...and with nothing more to send, the next tick does.
    committed = leader.log.committed
    assert follower.log.committed < committed
    leader.tick()
    cluster.stabilize()
    assert follower.log.committed == committed == cluster.node(3).log.committed


def test_eager_commit_tells_followers_at_once() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.node(1).propose(b"a")
    cluster.stabilize()
    assert cluster.node(2).log.committed == cluster.node(1).log.committed


# ---------------------------------------------------------------- followers forming a quorum


def test_followers_form_quorum_only_on_a_leader_with_a_majority_of_healthy_followers() -> None:
    cluster = Cluster((1, 2, 3), check_quorum=True)
    cluster.elect(1)
    leader = cluster.node(1)
    assert leader.followers_form_quorum()
    assert not cluster.node(2).followers_form_quorum()  # a follower has no followers
    # A silent follower stops counting at the next check-quorum round (one election timeout)
    # and a 3-node cluster then needs the leader's own copy to commit.
    cluster.cut.add(3)
    tick_until(cluster, 1, leader.config.election_ticks)
    assert leader.role == Role.LEADER
    assert not leader.followers_form_quorum()
    cluster.cut.clear()
    tick_until(cluster, 1, leader.config.heartbeat_ticks)
    assert leader.followers_form_quorum()


def test_followers_form_quorum_counts_replicating_followers_of_five() -> None:
    cluster = Cluster((1, 2, 3, 4, 5), check_quorum=True)
    cluster.elect(1)
    leader = cluster.node(1)
    cluster.cut.add(5)
    tick_until(cluster, 1, leader.config.election_ticks)
    assert leader.followers_form_quorum()  # 2, 3 and 4 are a majority of five
    leader.progress[4].become_probe()  # e.g. after a rejection: not replicating normally
    assert not leader.followers_form_quorum()


def test_commit_waits_on_leader_when_its_copy_is_the_missing_vote() -> None:
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    leader = cluster.node(1)
    assert not cluster.node(2).commit_waits_on_leader()
    cluster.cut.add(3)
    leader.propose(b"x")
    index, term = _leader_ready_deferred(cluster, 1)
    assert not leader.commit_waits_on_leader()  # no follower has it yet: the leader alone is not a majority
    for _ in range(5):
        cluster.deliver()
        cluster.process_ready(2)
    cluster.deliver()
    assert leader.log.committed < index
    assert leader.commit_waits_on_leader()  # node 2 and the leader's copy would commit it
    leader.persisted(index, term)
    assert leader.log.committed == index
    assert not leader.commit_waits_on_leader()


# ---------------------------------------------------------------- a node that lost its disk


def _lose_disk(cluster: Cluster, node_id: int, rejoining: bool, host_class: type[MemoryHost] = MemoryHost) -> None:
    """Node `node_id` restarts with an empty storage, as after its disk was replaced."""
    config = RaftConfig(id=node_id, voters=cluster.ids, rejoining=rejoining)
    cluster.hosts[node_id] = host_class(config, MemoryStorage(), node_id, RaftNode)


def _tick_nodes(cluster: Cluster, ids: tuple[int, ...], ticks: int) -> None:
    for _ in range(ticks):
        for node_id in ids:
            cluster.node(node_id).tick()
        cluster.stabilize()


def _committed_on_two_then_disk_lost(rejoining: bool) -> tuple[Cluster, int]:
    """Entries committed on nodes 1 and 2 only (3 is down); then 2 loses its disk, 1 crashes
    and 3 comes back: 2 and 3 are the only ones up, and only 1's log holds the entries."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    cluster.cut = {3}
    for i in range(5):
        cluster.node(1).propose(b"acked-%d" % i)
        cluster.stabilize()
    committed = cluster.node(1).log.committed
    assert cluster.hosts[2].applied == committed
    _lose_disk(cluster, 2, rejoining)
    cluster.cut = {1}
    return cluster, committed


def test_a_node_that_lost_its_disk_lets_a_candidate_without_committed_entries_win() -> None:
    # The hazard itself, so the next test is known to cover it: without rejoining, node 2's
    # vote elects node 3, whose log lacks entries that were committed (acknowledged).
    cluster, committed = _committed_on_two_then_disk_lost(rejoining=False)
    tick_until(cluster, 3, 2 * cluster.node(3).config.election_ticks + 1)
    assert cluster.node(3).role == Role.LEADER
    assert cluster.node(3).log.last_index() < committed


def test_a_rejoining_node_withholds_its_vote_until_it_has_caught_up() -> None:
    cluster, committed = _committed_on_two_then_disk_lost(rejoining=True)
    node2 = cluster.node(2)
    assert node2.withholding_votes
    tick_until(cluster, 3, 4 * cluster.node(3).config.election_ticks)
    assert cluster.node(3).role != Role.LEADER, "elected with the vote of a node that lost what it acknowledged"
    # Nor does node 2 stand itself, on ticks or when handed leadership.
    tick_until(cluster, 2, 4 * node2.config.election_ticks)
    assert node2.role == Role.FOLLOWER and cluster.count(MT.VOTE, sender=2) == 0
    assert cluster.count(MT.PRE_VOTE, sender=2) == 0
    node2.step(Message(MT.TIMEOUT_NOW, 2, 3, node2.term))
    cluster.stabilize()
    assert node2.role == Role.FOLLOWER
    # Node 1 returns: it leads on (or wins with node 3's vote), catches node 2 up, and node 2
    # votes again. The host reports the new link to the restarted node 2.
    cluster.cut = set()
    cluster.node(1).report_reconnected(2)
    _tick_nodes(cluster, (1, 2), 4 * cluster.node(1).config.election_ticks)
    leader = next(i for i in (1, 2, 3) if cluster.node(i).role == Role.LEADER)
    assert leader == 1
    assert cluster.hosts[2].applied >= committed
    assert not node2.withholding_votes
    assert [e.data for e in cluster.hosts[2].storage.entries(1, committed + 1) if e.data][:5] == \
        [b"acked-%d" % i for i in range(5)]
    cluster.cut = {1}
    _tick_nodes(cluster, (2, 3), 4 * node2.config.election_ticks)
    assert any(cluster.node(i).role == Role.LEADER for i in (2, 3))


def test_a_rejoining_node_waits_for_its_copy_to_be_durable() -> None:
    # Reaching the leader's commit index is not enough while those entries are unsynced: the
    # node votes again only from the advance() that follows their write.
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    for i in range(3):
        cluster.node(1).propose(b"v%d" % i)
        cluster.stabilize()
    seen: list[tuple[int, bool, bool]] = []

    class WatchedHost(MemoryHost):
        __slots__ = ()

        def handle_ready(self, send: Callable[[Message], None]) -> Ready | None:
            before = self.node.withholding_votes  # only advance() changes it
            rd = super().handle_ready(send)
            if rd is not None:
                seen.append((self.node.log.committed, before, self.node.withholding_votes))
            return rd

    _lose_disk(cluster, 2, rejoining=True, host_class=WatchedHost)
    node2 = cluster.node(2)
    _tick_nodes(cluster, (2,), 1)  # it asks its peers' terms first
    cluster.node(1).report_reconnected(2)
    cluster.stabilize()
    target = cluster.node(1).log.committed
    assert node2.log.committed == target and not node2.withholding_votes
    first_caught_up = next(s for s in seen if s[0] >= target)
    assert first_caught_up[1:] == (True, False), seen


def test_a_rejoining_node_takes_the_highest_term_of_a_majority_before_it_acknowledges() -> None:
    # Node 2 leads term 1, is cut off and still believes it leads; nodes 1 and 3 move on to
    # a new term. Then node 3 loses its disk. If it took term 1 from node 2's next AppendEntries,
    # its acknowledgement would let node 2 commit in term 1 over what the new term committed.
    cluster = Cluster((1, 2, 3))
    cluster.elect(2)
    cluster.node(2).propose(b"before")
    cluster.stabilize()
    cluster.cut = {2}
    _tick_nodes(cluster, (1, 3), 4 * cluster.node(1).config.election_ticks)
    leader = next(i for i in (1, 3) if cluster.node(i).role == Role.LEADER)
    assert cluster.node(leader).term > 1
    cluster.node(leader).propose(b"new-term")
    cluster.stabilize()
    committed = cluster.node(leader).log.committed
    new_term = cluster.node(leader).term
    _lose_disk(cluster, 3, rejoining=True)
    node3 = cluster.node(3)
    # Node 3 hears only from node 2 at first: no answer from a majority, no acknowledgement.
    cluster.cut = {1}
    _tick_nodes(cluster, (3,), 1)
    stale_index = cluster.node(2).propose(b"deposed")
    cluster.stabilize()
    assert node3.log.last_index() == 0 and cluster.node(2).log.committed < stale_index
    # Node 1 answers too: node 3 takes the new term, and refuses node 2's term 1 from then on
    # (node 1 stays out of node 2's reach, so only node 3 could make a majority with it).
    cluster.cut = set()
    _tick_nodes(cluster, (3,), node3.config.election_ticks + 1)
    assert node3.term >= new_term
    cluster.cut = {1}
    cluster.node(2).propose(b"deposed-again")
    cluster.stabilize()
    assert cluster.node(2).role != Role.LEADER or cluster.node(2).log.committed < stale_index
    assert cluster.node(1).log.term(committed) == new_term and cluster.node(1).log.committed >= committed


def test_a_rejoining_node_waits_for_every_peer_and_marks_its_vote_in_that_term() -> None:
    cluster = Cluster((1, 2, 3, 4, 5))
    cluster.elect(1)
    term = cluster.node(1).term
    _lose_disk(cluster, 4, rejoining=True)
    _lose_disk(cluster, 5, rejoining=True)
    cluster.cut = {1, 2, 3}  # 4 and 5 only hear each other: both still asking
    _tick_nodes(cluster, (4, 5), 3)
    answers = [m for m in cluster.delivered if m.type == MT.TERM_QUERY_RESPONSE]
    assert answers and all(m.reject for m in answers)
    assert cluster.node(4).withholding_votes and cluster.node(4).term == 0
    cluster.cut = {3}  # three answers of four are not enough: every peer must answer
    _tick_nodes(cluster, (4, 5), cluster.node(4).config.election_ticks + 1)
    assert cluster.node(4).vote == NONE  # not done: the mark below comes with the last answer
    cluster.cut = set()
    _tick_nodes(cluster, (4, 5), cluster.node(4).config.election_ticks + 1)
    for node_id in (4, 5):
        node = cluster.node(node_id)
        # It may have voted in this term before its disk was lost: it votes in it for no one.
        assert node.term == term and node.vote == node_id
    cluster.node(1).report_reconnected(4)
    cluster.node(1).report_reconnected(5)
    _tick_nodes(cluster, (1, 4, 5), 2 * cluster.node(4).config.election_ticks)
    assert not cluster.node(4).withholding_votes and not cluster.node(5).withholding_votes


def test_a_lone_voter_that_lost_its_disk_starts_over_at_once() -> None:
    node = RaftNode(RaftConfig(id=1, voters=(1,), rejoining=True), MemoryStorage(), random.Random(1))
    assert not node.withholding_votes
    node.campaign()
    assert node.role == Role.LEADER


# ---------------------------------------------------------------- flow control after a stall


def test_uncommitted_limit_follows_a_small_pipeline() -> None:
    """A pipeline of 2 x 10 bytes per round trip carries 8 x 20 = 160 uncommitted bytes at most,
    however large max_uncommitted_bytes is: a longer tail would take more round trips to commit
    after a stall than clients wait (docs/raft.md)."""
    cluster = Cluster((1, 2, 3), max_inflight=2, max_append_bytes=10, max_entry_bytes=10)
    assert cluster.node(1).config.uncommitted_limit == 160
    cluster.elect(1)
    cluster.cut = {2, 3}
    leader = cluster.node(1)
    for _ in range(16):
        leader.propose(b"x" * 10)
    with pytest.raises(UncommittedLimitError, match="round trips"):
        leader.propose(b"y")
    assert RaftConfig(id=1, voters=(1,)).uncommitted_limit == RaftConfig(
        id=1, voters=(1,)
    ).max_uncommitted_bytes, "at the defaults the configured bound is the one that binds"


def test_a_new_leader_counts_the_uncommitted_tail_it_inherits() -> None:
    cluster = Cluster((1, 2, 3), max_entry_bytes=10, max_uncommitted_bytes=30, pre_vote=False,
                      check_quorum=False)
    cluster.elect(1)
    # Node 1 replicates three entries to node 2 but learns of no acknowledgement: they stay
    # uncommitted everywhere, and node 2 holds them.
    for _ in range(3):
        cluster.node(1).propose(b"x" * 10)
    cluster.process_ready(1)
    cluster.deliver(keep=lambda m: m.to == 2 and m.type == MT.APPEND)
    cluster.process_ready(2)
    cluster.queue.clear()
    assert cluster.node(2).log.last_index() == 4 and cluster.node(2).log.committed == 1
    cluster.node(2).campaign()
    cluster.cut = {1}
    cluster.stabilize(keep=lambda m: m.type in (MT.VOTE, MT.VOTE_RESPONSE))
    new = cluster.node(2)
    assert new.role == Role.LEADER
    assert new.uncommitted_bytes == 30
    with pytest.raises(UncommittedLimitError):
        new.propose(b"y")
    cluster.cut = set()
    for _ in range(2):
        new.tick()
        cluster.stabilize()
    assert new.log.committed == new.log.last_index() and new.uncommitted_bytes == 0
    new.propose(b"y")


def _pipelined_appends(cluster: Cluster, count: int) -> list[Message]:
    leader = cluster.node(1)
    for i in range(count):
        leader.propose(b"e%d" % i)
        cluster.process_ready(1)
    sent = [m for m in cluster.queue if m.type == MT.APPEND and m.to == 3]
    cluster.queue = [m for m in cluster.queue if m not in sent]
    return sent


def test_a_follower_holds_appends_that_arrive_early() -> None:
    """Pipelined appends reaching a follower in reverse: each early one is rejected, but held,
    and once the gap fills the follower acknowledges the whole run with one answer."""
    cluster = Cluster((1, 2, 3), max_inflight=8)
    cluster.elect(1)
    sent = _pipelined_appends(cluster, 5)
    assert [m.index for m in sent] == [1, 2, 3, 4, 5]
    follower = cluster.node(3)
    replies: list[Message] = []
    for m in reversed(sent):
        follower.step(m)
        cluster.hosts[3].handle_ready(replies.append)
    acks = [m for m in replies if m.type == MT.APPEND_RESPONSE]
    assert [m.reject for m in acks[:4]] == [True] * 4, "early appends are still rejected"
    assert [m.index for m in acks[4:]] == [2, 6]
    assert follower.log.last_index() == 6
    for m in acks:
        cluster.node(1).step(m)
    progress = cluster.node(1).progress[3]
    assert progress.match == 6 and progress.state == ProgressState.REPLICATE


def test_a_follower_gives_up_its_farthest_held_append_for_a_nearer_one() -> None:
    """With room for one held append, a far-ahead one held first must not take the room of
    every nearer one after it: the nearer one fills the gap first."""
    cluster = Cluster((1, 2, 3), max_inflight=8)
    cluster.elect(1)
    sent = _pipelined_appends(cluster, 5)
    follower = cluster.node(3)
    follower.config = dataclasses.replace(follower.config, max_inflight=1)
    for m in (sent[4], sent[2], sent[3]):
        follower.step(m)
    assert list(follower._early_appends) == [sent[2].index]
    follower.step(sent[0])
    follower.step(sent[1])
    assert follower.log.last_index() == sent[2].entries[-1].index
    assert not follower._early_appends


def test_a_follower_forgets_held_appends_of_an_older_term() -> None:
    cluster = Cluster((1, 2, 3), max_inflight=8)
    cluster.elect(1)
    sent = _pipelined_appends(cluster, 3)
    follower = cluster.node(3)
    follower.step(sent[-1])
    assert follower._early_appends
    follower.step(Message(MT.HEARTBEAT, 3, 2, follower.term + 1))
    assert not follower._early_appends and follower._early_bytes == 0


def test_a_leader_host_postpones_snapshots_while_it_streams_one() -> None:
    """A snapshot taken while one streams to a lagging follower makes that stream start over;
    the host waits (up to POSTPONE_FACTOR thresholds) so the follower can finish."""
    cluster = Cluster((1, 2, 3), snapshot_chunk_bytes=8)
    leader_host = _leader_past_a_cut_follower(cluster, 4)
    cluster.cut = set()

    def no_chunks(m: Message) -> bool:
        return m.type != MT.SNAPSHOT

    cluster.node(1).tick()
    cluster.stabilize(keep=no_chunks)
    assert cluster.node(1).streaming_snapshot()
    taken = leader_host.storage.snapshot().index
    leader_host.snapshot_every = 2
    for i in range(3):
        cluster.node(1).propose(b"w%d" % i)
        cluster.stabilize(keep=no_chunks)
    assert leader_host.applied >= taken + 3
    assert leader_host.storage.snapshot().index == taken, "no snapshot while streaming"
    for _ in range(3):
        cluster.node(1).tick()
        cluster.stabilize()
    assert cluster.hosts[3].applied == leader_host.applied
    assert not cluster.node(1).streaming_snapshot()


def test_snapshot_due() -> None:
    assert not snapshot_due(5, 0, streaming=False)
    assert snapshot_due(10, 10, streaming=False)
    assert not snapshot_due(9, 10, streaming=False)
    assert not snapshot_due(10, 10, streaming=True)
    assert snapshot_due(POSTPONE_FACTOR * 10, 10, streaming=True)
