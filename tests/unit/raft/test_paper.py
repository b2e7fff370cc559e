"""Tests anchored in the Raft paper ("In Search of an Understandable Consensus Algorithm",
extended version) and in the project's seed spec. Each docstring quotes the rule it checks."""

from __future__ import annotations

import random

import pytest

from eventstream.raft import (
    NONE,
    Entry,
    HardState,
    Message,
    MessageType,
    RaftConfig,
    RaftNode,
    Role,
)
from eventstream.raft.storage import MemoryStorage
from tests.unit.raft.cluster import Cluster, storage_with_terms

MT = MessageType


def lone_node(node_id: int = 1, voters=(1, 2, 3), storage=None, **config) -> RaftNode:
    cfg = RaftConfig(id=node_id, voters=voters, **config)
    return RaftNode(cfg, storage or MemoryStorage(), random.Random(node_id))


def drain(node: RaftNode) -> list[Message]:
    """Carry out the node's Ready against its MemoryStorage; return the messages sent."""
    rd = node.ready()
    storage = node.log.storage
    assert isinstance(storage, MemoryStorage)
    storage.append(rd.entries)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)
    node.advance(rd)
    return rd.messages + rd.persisted_messages


# ---------------------------------------------------------------- §5.2 leader election


def test_follower_starts_election_after_timeout() -> None:
    """§5.2: "If a follower receives no communication over a period of time called the election
    timeout, then it assumes there is no viable leader and begins an election"; "a follower
    increments its current term and transitions to candidate state. It then votes for itself and
    issues RequestVote RPCs in parallel to each of the other servers"."""
    node = lone_node(pre_vote=False)
    for _ in range(2 * node.config.election_ticks):
        node.tick()
    assert node.role == Role.CANDIDATE
    assert node.term == 1
    assert node.vote == 1
    rd = node.ready()
    votes = [m for m in rd.persisted_messages if m.type == MT.VOTE]
    assert sorted(m.to for m in votes) == [2, 3]
    assert all(m.term == 1 for m in votes)
    # The vote request promises durable state: it is not among the send-now messages.
    assert not rd.messages
    assert rd.hard_state == HardState(1, 1, 0) and rd.must_sync


def test_election_timeout_is_randomized() -> None:
    """§5.2: "Raft uses randomized election timeouts ... chosen randomly from a fixed interval"."""
    timeouts = set()
    for seed in range(40):
        cfg = RaftConfig(id=1, voters=(1, 2, 3), election_ticks=10)
        node = RaftNode(cfg, MemoryStorage(), random.Random(seed))
        timeouts.add(node.randomized_election_timeout)
    assert min(timeouts) >= 10 and max(timeouts) < 20
    assert len(timeouts) > 5


def test_candidate_with_majority_becomes_leader() -> None:
    """§5.2: "A candidate wins an election if it receives votes from a majority of the servers
    in the full cluster for the same term"."""
    cluster = Cluster((1, 2, 3, 4, 5), pre_vote=False)
    cluster.cut = {4, 5}
    cluster.elect(1)
    assert cluster.node(1).role == Role.LEADER
    assert cluster.node(1).term == 1


def test_candidate_without_majority_stays_candidate() -> None:
    """§5.2: a candidate that does not get a majority neither wins nor loses; it "times out and
    starts a new election by incrementing its term"."""
    cluster = Cluster((1, 2, 3, 4, 5), pre_vote=False)
    cluster.cut = {3, 4, 5}
    cluster.elect(1)
    node = cluster.node(1)
    assert node.role == Role.CANDIDATE and node.term == 1
    for _ in range(2 * node.config.election_ticks):
        node.tick()
    assert node.role == Role.CANDIDATE and node.term == 2


def test_one_vote_per_term() -> None:
    """§5.2: "Each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis"."""
    node = lone_node(node_id=3, pre_vote=False, check_quorum=False)
    node.step(Message(MT.VOTE, 3, 1, 1, index=0, log_term=0))
    node.step(Message(MT.VOTE, 3, 2, 1, index=0, log_term=0))
    responses = drain(node)
    assert [(m.to, m.reject) for m in responses] == [(1, False), (2, True)]
    assert node.vote == 1
    # Asking again is answered the same way (a lost response can be retried).
    node.step(Message(MT.VOTE, 3, 1, 1, index=0, log_term=0))
    assert [(m.to, m.reject) for m in drain(node)] == [(1, False)]


def test_vote_survives_restart() -> None:
    """Figure 2: votedFor is persistent state: a restarted server must not vote twice."""
    cluster = Cluster((1, 2, 3), pre_vote=False)
    cluster.node(1).campaign()
    cluster.stabilize()
    host = cluster.hosts[2]
    assert host.storage.hard_state.vote == 1
    host.start(seed=99)
    host.node.step(Message(MT.VOTE, 2, 3, 1, index=10, log_term=1))
    responses = drain(host.node)
    assert responses[0].reject


def test_candidate_steps_down_for_leader_of_same_term() -> None:
    """§5.2: "If the leader's term ... is at least as large as the candidate's current term,
    then the candidate recognizes the leader as legitimate and returns to follower state"."""
    node = lone_node(pre_vote=False)
    node.campaign()
    drain(node)
    node.step(Message(MT.APPEND, 1, 2, node.term, index=0, log_term=0))
    assert node.role == Role.FOLLOWER
    assert node.leader == 2


def test_stale_term_messages_are_ignored() -> None:
    """§5.1: "If a server receives a request with a stale term number, it rejects the
    request"."""
    node = lone_node(storage=storage_with_terms([1, 2], term=3), pre_vote=False, check_quorum=False)
    node.step(Message(MT.APPEND, 1, 2, 2, index=2, log_term=2, entries=[Entry(3, 2, b"x")]))
    assert node.log.last_index() == 2
    node.step(Message(MT.VOTE, 1, 2, 2, index=9, log_term=2))
    assert not drain(node)
    assert node.vote == NONE


def test_an_answer_beyond_the_leaders_log_is_dropped() -> None:
    """A follower cannot truthfully hold more of this term's entries than its leader sent; such
    an answer (a node that lost an unsynced tail answering about its old log) changes nothing."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    leader = cluster.node(1)
    last, committed = leader.log.last_index(), leader.log.committed
    leader.step(Message(MT.APPEND_RESPONSE, 1, 2, leader.term, index=last + 5))
    assert leader.progress[2].match <= last and leader.log.committed == committed
    index = leader.propose(b"after")
    cluster.stabilize()
    assert leader.log.committed == index and cluster.hosts[2].applied == index


def test_higher_term_turns_leader_into_follower() -> None:
    """§5.1: "If one server's current term is smaller than the other's, then it updates its
    current term to the larger value. If a candidate or leader discovers that its term is out of
    date, it immediately reverts to follower state"."""
    cluster = Cluster((1, 2, 3))
    cluster.elect(1)
    leader = cluster.node(1)
    leader.step(Message(MT.APPEND_RESPONSE, 1, 2, leader.term + 3, index=0))
    assert leader.role == Role.FOLLOWER
    assert leader.term == 4


# ---------------------------------------------------------------- §5.4.1 election restriction


@pytest.mark.parametrize(
    ("candidate_index", "candidate_term", "granted"),
    [
        (3, 2, True),  # same last term, same length
        (4, 2, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter
        (1, 3, True),  # higher last term wins regardless of length
        (9, 1, False),  # lower last term loses regardless of length
    ],
)
def test_vote_only_for_up_to_date_log(
    candidate_index: int, candidate_term: int, granted: bool
) -> None:
    """§5.4.1: "If the logs have last entries with different terms, then the log with the later
    term is more up-to-date. If the logs end with the same term, then whichever log is longer
    is more up-to-date." A voter denies its vote to a less up-to-date candidate."""
    node = lone_node(
        storage=storage_with_terms([1, 2, 2], term=3), pre_vote=False, check_quorum=False
    )
    node.step(Message(MT.VOTE, 1, 2, 4, index=candidate_index, log_term=candidate_term))
    (response,) = drain(node)
    assert response.type == MT.VOTE_RESPONSE
    assert response.reject == (not granted)
    assert node.vote == (2 if granted else NONE)


def test_stale_log_cannot_win() -> None:
    """§5.4.1: "a candidate must contact a majority of the cluster in order to be elected, which
    means that every committed entry must be present in at least one of those servers"."""
    storages = {
        1: storage_with_terms([1], term=1),
        2: storage_with_terms([1, 1], term=1),
        3: storage_with_terms([1, 1], term=1),
    }
    cluster = Cluster((1, 2, 3), storages=storages, pre_vote=False)
    cluster.elect(1)
    assert cluster.node(1).role != Role.LEADER
    cluster.elect(2)
    assert cluster.node(2).role == Role.LEADER


# ---------------------------------------------------------------- §5.3 log replication

FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("case", sorted(FIGURE_7_FOLLOWERS))
def test_figure_7_follower_logs_converge(case: str) -> None:
    """§5.3, Figure 7: when the leader at the top (term 8) comes to power, any of the follower
    logs (a)-(f) may be present. "The leader handles inconsistencies by forcing the followers'
    logs to duplicate its own": missing entries are sent, extraneous uncommitted ones deleted.
    Fast backtracking must skip conflicting terms rather than step one index per round trip."""
    follower_terms = FIGURE_7_FOLLOWERS[case]
    storages = {
        1: storage_with_terms(FIGURE_7_LEADER, term=7),
        2: storage_with_terms(follower_terms, term=7),
        3: MemoryStorage(),  # a third voter, empty, lets the leader win against (d)
    }
    storages[3].set_hard_state(HardState(7, 0, 0))
    cluster = Cluster((1, 2, 3), storages=storages, check_quorum=False)
    cluster.elect(1)
    leader = cluster.node(1)
    assert leader.role == Role.LEADER and leader.term == 8
    expected = [*FIGURE_7_LEADER, 8]
    assert cluster.terms(1) == expected
    assert cluster.terms(2) == expected
    assert cluster.node(2).log.committed == len(expected)
    rejections = cluster.count(MT.APPEND_RESPONSE, sender=2, reject=True)
    # Stepping back one index at a time would take up to 7 rejections (case f); one round trip
    # per conflicting term is enough.
    assert rejections <= 3


def test_seed_conflict_example() -> None:
    """Seed spec, "Conflict Resolution": leader log 1:1 2:1 3:1 4:2 5:2 6:3 7:3, stale follower
    1:1 2:1 3:1 4:2 5:2 6:2. AppendEntries(prevLogIndex=6, prevLogTerm=3) is rejected, the
    leader retries at prevLogIndex=5, prevLogTerm=2, which matches, and the follower deletes
    entry 6 and appends the leader's entries."""
    leader_storage = storage_with_terms([1, 1, 1, 2, 2, 3, 3], term=3)
    follower_storage = storage_with_terms([1, 1, 1, 2, 2, 2], term=2)
    third = MemoryStorage()
    third.set_hard_state(HardState(3, 0, 0))
    cluster = Cluster(
        (1, 2, 3), storages={1: leader_storage, 2: follower_storage, 3: third}, check_quorum=False
    )
    cluster.cut = {2}
    cluster.elect(1)  # term 4; no-op at index 8
    cluster.cut = set()
    cluster.node(1).tick()  # a heartbeat round finds the follower again
    cluster.stabilize()
    follower_data = follower_storage.entries(1, follower_storage.last_index() + 1)
    leader_data = leader_storage.entries(1, leader_storage.last_index() + 1)
    assert follower_data == leader_data
    assert [e.term for e in follower_data] == [1, 1, 1, 2, 2, 3, 3, 4]
    rejected = [
        m for m in cluster.delivered if m.type == MT.APPEND_RESPONSE and m.sender == 2 and m.reject
    ]
    assert rejected, "the follower must first reject the mismatching prevLogTerm"
    appends_to_2 = [m for m in cluster.delivered if m.type == MT.APPEND and m.to == 2]
    # The accepted retry is anchored at the last matching entry, 5:2.
    assert any(m.index == 5 and m.log_term == 2 for m in appends_to_2)


def test_follower_rejects_on_prev_mismatch_and_accepts_on_match() -> None:
    """§5.3: "If the follower does not find an entry in its log with the same index and term,
    then it refuses the new entries"; otherwise it appends them."""
    node = lone_node(storage=storage_with_terms([1, 1, 2], term=2), pre_vote=False)
    node.step(Message(MT.APPEND, 1, 2, 2, index=3, log_term=1, entries=[Entry(4, 2, b"x")]))
    (reject,) = drain(node)
    assert reject.reject and reject.index == 3
    # Hint: the largest index whose term is <= the leader's prevLogTerm 1.
    assert (reject.hint_index, reject.log_term) == (2, 1)
    node.step(Message(MT.APPEND, 1, 2, 2, index=3, log_term=2, entries=[Entry(4, 2, b"x")]))
    (accept,) = drain(node)
    assert not accept.reject and accept.index == 4
    assert node.log.last_index() == 4


def test_conflicting_suffix_is_deleted() -> None:
    """Figure 2, AppendEntries receiver rule 3: "If an existing entry conflicts with a new one
    (same index but different terms), delete the existing entry and all that follow it"."""
    storage = storage_with_terms([1, 1, 1, 1], term=2)
    node = lone_node(storage=storage, pre_vote=False)
    node.step(Message(MT.APPEND, 1, 2, 2, index=2, log_term=1, entries=[Entry(3, 2, b"new")]))
    rd = node.ready()
    assert rd.entries == [Entry(3, 2, b"new")]
    storage.append(rd.entries)
    node.advance(rd)
    assert [e.term for e in storage.entries(1, storage.last_index() + 1)] == [1, 1, 2]


def test_entries_already_present_are_not_truncated() -> None:
    """Figure 2 receiver rule 4 only appends entries "not already in the log": a delayed,
    shorter AppendEntries must not cut off entries a later one appended."""
    node = lone_node(storage=storage_with_terms([1, 1, 1, 1], term=1), pre_vote=False)
    node.step(Message(MT.APPEND, 1, 2, 1, index=1, log_term=1, entries=[Entry(2, 1, b"e2")]))
    assert node.log.last_index() == 4
    assert not node.ready().entries


def test_leader_commits_after_majority_and_followers_learn_commit() -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has replicated it
    on a majority of the servers"; "the leader ... includes that index in future AppendEntries
    RPCs (including heartbeats) so that the other servers eventually find out"."""
    cluster = Cluster((1, 2, 3, 4, 5))
    cluster.elect(1)
    cluster.cut = {4, 5}
    index = cluster.node(1).propose(b"cmd")
    cluster.stabilize()
    assert cluster.node(1).log.committed == index
    assert cluster.hosts[2].applied == index
    assert cluster.node(4).log.committed < index
    cluster.cut = set()
    for _ in range(cluster.node(1).config.heartbeat_ticks):
        cluster.node(1).tick()
    cluster.stabilize()
    assert cluster.hosts[4].applied == index


def test_leader_counts_itself_only_after_its_write_is_durable() -> None:
    """Raft thesis §10.2.1: the leader may send AppendEntries before its own disk write, but its
    own match index covers only entries it has persisted."""
    node = lone_node(node_id=1, voters=(1,), pre_vote=False)
    node.campaign()
    assert node.role == Role.LEADER
    index = node.propose(b"x")
    assert node.log.committed == 0
    rd = node.ready()
    assert [e.index for e in rd.entries] == [1, index]
    node.log.storage.append(rd.entries)  # type: ignore[attr-defined]
    node.advance(rd)
    assert node.log.committed == index


# ---------------------------------------------------------------- Figure 8 commitment rule


def _figure_8_cluster(node_class: type[RaftNode] = RaftNode) -> Cluster:
    storages = {
        1: storage_with_terms([1, 2], term=2),
        2: storage_with_terms([1], term=2),
        3: storage_with_terms([1], term=2),
    }
    return Cluster(
        (1, 2, 3), storages=storages, node_class=node_class, check_quorum=False, max_append_bytes=1
    )


def _lose_noop_acks(m: Message) -> bool:
    return not (m.type == MT.APPEND_RESPONSE and m.index >= 3)


def test_figure_8_old_term_entry_not_committed_by_count() -> None:
    """§5.4.2, Figure 8: "Raft never commits log entries from previous terms by counting
    replicas. Only log entries from the leader's current term are committed by counting
    replicas; once an entry from the current term has been committed in this way, then all
    prior entries are committed indirectly". Here the old-term entry 2:2 reaches a majority
    while the acknowledgements of the new leader's no-op are lost."""
    cluster = _figure_8_cluster()
    leader = cluster.node(1)
    leader.campaign()
    cluster.stabilize(keep=_lose_noop_acks)
    assert leader.role == Role.LEADER and leader.term == 3
    assert leader.progress[2].match == 2 and leader.progress[3].match == 2
    assert leader.log.committed == 0, "2:2 is on a majority but is not of the current term"
    leader.tick()
    cluster.stabilize()
    assert leader.log.committed == 3
    assert [e.term for e in cluster.hosts[2].storage.entries(1, 4)] == [1, 2, 3]


def test_figure_8_test_catches_the_mutation() -> None:
    """The test above can fail: a core that counts old-term replicas commits 2:2 early."""
    from tests.sim.mutations import OldTermCommit

    cluster = _figure_8_cluster(OldTermCommit)
    leader = cluster.node(1)
    leader.campaign()
    cluster.stabilize(keep=_lose_noop_acks)
    assert leader.log.committed == 2
