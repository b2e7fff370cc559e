"""Membership changes in the consensus core: the entry format, learners, one change at a time,
promotion lag, removing followers and the leader, cut-off changes, restart and snapshots."""

from __future__ import annotations

import random

import pytest

from eventstream.raft import Entry, Message, MessageType, RaftConfig, RaftNode, Role
from eventstream.raft.membership import (
    ChangeKind,
    Membership,
    MembershipChange,
    MembershipError,
    changed,
    decode_membership_entry,
    encode_membership_entry,
)
from eventstream.raft.node import MalformedMessageError, MembershipChangeError, ProposalError
from eventstream.raft.storage import MemoryStorage
from tests.unit.raft.cluster import Cluster

MT = MessageType


def change(kind: str, node: int) -> MembershipChange:
    return MembershipChange(ChangeKind(kind), node)


def settle(cluster: Cluster, ticks: int = 0, leader: int | None = None) -> None:
    """Stabilize, then tick every node `ticks` times, stabilizing after each."""
    cluster.stabilize()
    for _ in range(ticks):
        for node_id in cluster.hosts:
            cluster.node(node_id).tick()
        cluster.stabilize()


def started(ids=(1, 2, 3), spares=(4, 5), **config) -> Cluster:
    cluster = Cluster(ids, spares=spares, **config)
    cluster.elect(1)
    assert cluster.node(1).role == Role.LEADER
    return cluster


def logs_equal(cluster: Cluster, ids) -> bool:
    return len({tuple(cluster.terms(i)) for i in ids}) == 1


# ------------------------------------------------------------------------------ format


def test_a_membership_entry_round_trips_with_its_context():
    membership = Membership.of((3, 1, 2), (5,), b"addresses")
    data = encode_membership_entry(membership)
    assert decode_membership_entry(data) == membership
    assert decode_membership_entry(memoryview(data)) == Membership((1, 2, 3), (5,), b"addresses")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: d[:5], "shorter than its head"),
        (lambda d: d[:1] + b"\x09" + d[2:], "version 9 is unknown"),
        (lambda d: d + b"x", "its head says"),
        (lambda d: d[:10] + d[18:26] + d[10:18] + d[26:], "out of order"),
    ],
)
def test_a_damaged_membership_entry_is_refused_with_the_reason(damage, message):
    data = encode_membership_entry(Membership.of((1, 2, 3)))
    with pytest.raises(MembershipError, match=message):
        decode_membership_entry(damage(data))


@pytest.mark.parametrize(
    "kind, node, message",
    [
        ("add-learner", 2, "already a voter"),
        ("add-voter", 4, "already a learner"),
        ("promote", 2, "not a learner"),
        ("remove", 9, "not a member"),
        ("add-voter", 0, "positive"),
    ],
)
def test_a_change_that_does_not_apply_is_refused(kind, node, message):
    with pytest.raises(MembershipError, match=message):
        changed(Membership.of((1, 2, 3), (4,)), change(kind, node))


def test_the_last_voter_cannot_be_removed():
    with pytest.raises(MembershipError, match="last voter"):
        changed(Membership.of((1,), (2,)), change("remove", 1))


def test_plain_proposals_cannot_pose_as_membership_entries():
    cluster = started()
    with pytest.raises(ProposalError, match="propose_membership"):
        cluster.node(1).propose(encode_membership_entry(Membership.of((1, 2, 3, 4))))


def test_a_follower_refuses_an_append_with_a_malformed_membership_entry():
    cluster = started()
    follower = cluster.node(2)
    last = follower.log.last_index()
    bad = encode_membership_entry(Membership.of((1, 2))) + b"junk"
    m = Message(MT.APPEND, 2, 1, follower.term, index=last, log_term=follower.log.last_term(),
                entries=[Entry(last + 1, follower.term, bad)])
    with pytest.raises(MalformedMessageError, match="head says"):
        follower.step(m)
    assert follower.log.last_index() == last


# ------------------------------------------------------------------------------ learners


def test_a_learner_receives_the_log_but_counts_in_no_quorum():
    cluster = started()
    leader = cluster.node(1)
    leader.propose_membership(change("add-learner", 4))
    settle(cluster)
    for i in range(3):
        leader.propose(b"x%d" % i)
    settle(cluster)
    assert logs_equal(cluster, (1, 2, 3, 4))
    assert cluster.node(4).memberships.current == Membership((1, 2, 3), (4,))
    assert cluster.node(4).voters.voters == (1, 2, 3)

    # With two voters cut off, the learner's acknowledgement must not make a majority.
    committed = leader.log.committed
    cluster.cut = {2, 3}
    index = leader.propose(b"only the learner has it")
    settle(cluster)
    assert leader.progress[4].match == index
    assert leader.log.committed == committed

    # A learner never campaigns, however long it hears nothing.
    cluster.cut = {1, 2, 3}
    settle(cluster, ticks=60)
    assert cluster.count(MT.PRE_VOTE, sender=4) == 0 and cluster.count(MT.VOTE, sender=4) == 0


def test_a_lagging_learner_is_promoted_only_once_it_is_caught_up():
    cluster = started(max_promotion_lag=2)
    leader = cluster.node(1)
    leader.propose_membership(change("add-learner", 4))
    settle(cluster)
    cluster.cut = {4}
    for i in range(5):
        leader.propose(b"x%d" % i)
    settle(cluster)
    with pytest.raises(MembershipChangeError, match="5 entries behind.*max_promotion_lag=2"):
        leader.propose_membership(change("promote", 4))
    cluster.cut = set()
    settle(cluster, ticks=2)
    leader.propose_membership(change("promote", 4))
    settle(cluster)
    for node_id in (1, 2, 3, 4):
        assert cluster.node(node_id).voters.voters == (1, 2, 3, 4)
    # Four voters: a majority is three, so two cut off stop commits.
    committed = leader.log.committed
    cluster.cut = {3, 4}
    leader.propose(b"needs three")
    settle(cluster)
    assert leader.log.committed == committed


def test_auto_promote_makes_a_caught_up_learner_a_voter():
    cluster = started(auto_promote=True)
    cluster.node(1).propose_membership(change("add-learner", 4))
    settle(cluster, ticks=3)
    status = cluster.node(1).status()
    assert status.membership == Membership((1, 2, 3, 4), ())
    assert not status.membership_pending


# ------------------------------------------------------------------------------ the rules


def test_one_change_at_a_time():
    cluster = started()
    leader = cluster.node(1)
    cluster.cut = {2, 3}
    index = leader.propose_membership(change("add-learner", 4))
    assert leader.status().membership_pending and leader.status().membership_index == index
    with pytest.raises(MembershipChangeError, match=f"change at index {index} is not yet committed"):
        leader.propose_membership(change("add-learner", 5))
    cluster.cut = set()
    settle(cluster, ticks=2)
    leader.propose_membership(change("add-learner", 5))


def test_a_new_leader_changes_nothing_before_it_commits_in_its_term():
    cluster = Cluster((1, 2, 3), spares=(4,))
    node = cluster.node(1)
    node.campaign()
    # Deliver votes only, so the new leader's no-op stays uncommitted.
    settle_votes_only = lambda m: m.type in (MT.PRE_VOTE, MT.PRE_VOTE_RESPONSE, MT.VOTE, MT.VOTE_RESPONSE)  # noqa: E731
    cluster.stabilize(keep=settle_votes_only)
    assert node.role == Role.LEADER
    with pytest.raises(MembershipChangeError, match="not yet committed an entry of its term"):
        node.propose_membership(change("add-learner", 4))
    settle(cluster, ticks=2)  # heartbeats expose the lost appends; the no-op commits
    node.propose_membership(change("add-learner", 4))


def test_a_change_cut_off_by_a_new_leader_is_forgotten():
    cluster = started()
    cluster.cut = {3}
    cluster.node(1).propose_membership(change("add-learner", 4))
    cluster.process_all()
    cluster.deliver(keep=lambda m: m.type == MT.APPEND)  # node 2 appends it, uncommitted
    follower = cluster.node(2)
    k = follower.log.last_index()
    assert follower.memberships.current.learners == (4,)
    # A leader of the next term that never had the change replaces entry k.
    term = follower.term + 1
    follower.step(Message(MT.APPEND, 2, 3, term, index=k - 1, log_term=follower.log.term(k - 1),
                          entries=[Entry(k, term, b"")], commit=k - 1))
    assert follower.log.term(k) == term
    assert follower.memberships.current == Membership((1, 2, 3))
    assert follower.voters.voters == (1, 2, 3)


# ------------------------------------------------------------------------------ removal


def test_a_removed_follower_stops_campaigning_and_the_cluster_goes_on():
    cluster = started()
    leader = cluster.node(1)
    leader.propose_membership(change("remove", 3))
    settle(cluster, ticks=2)
    assert leader.voters.voters == (1, 2)
    assert 3 not in leader.progress
    before = len(cluster.delivered)
    settle(cluster, ticks=80)
    later = cluster.delivered[before:]
    assert not [m for m in later if m.sender == 3 and m.type in (MT.PRE_VOTE, MT.VOTE)]
    assert leader.role == Role.LEADER
    index = leader.propose(b"two voters commit")
    settle(cluster)
    assert leader.log.committed >= index


def test_a_removed_leader_hands_over_and_steps_down():
    cluster = started()
    old = cluster.node(1)
    for i in range(3):
        old.propose(b"x%d" % i)
    settle(cluster)
    term = old.term
    old.propose_membership(change("remove", 1))
    settle(cluster, ticks=30)
    leaders = [i for i in (1, 2, 3) if cluster.node(i).role == Role.LEADER]
    assert len(leaders) == 1 and leaders[0] in (2, 3)
    new = cluster.node(leaders[0])
    assert new.term == term + 1  # one hand-over election, no storm
    assert new.voters.voters == (2, 3)
    assert old.role == Role.FOLLOWER
    assert cluster.count(MT.TIMEOUT_NOW, sender=1) == 1
    index = new.propose(b"after the hand-over")
    settle(cluster)
    assert new.log.committed >= index
    settle(cluster, ticks=60)
    assert new.role == Role.LEADER and new.term == term + 1


def test_a_removed_leader_whose_hand_over_fails_still_steps_down():
    cluster = started()
    old = cluster.node(1)
    old.propose_membership(change("remove", 1))
    settle(cluster)
    # The commit reached the followers' acknowledgements, but TimeoutNow is lost.
    cluster.stabilize(keep=lambda m: m.type != MT.TIMEOUT_NOW)
    settle_keep = lambda m: m.type != MT.TIMEOUT_NOW  # noqa: E731
    for _ in range(40):
        for node_id in cluster.hosts:
            cluster.node(node_id).tick()
        cluster.stabilize(keep=settle_keep)
    assert old.role == Role.FOLLOWER
    assert [i for i in (2, 3) if cluster.node(i).role == Role.LEADER]


# ------------------------------------------------------------------------------ durability


def test_a_restarted_node_recovers_its_membership_from_its_log():
    cluster = started()
    cluster.node(1).propose_membership(change("add-learner", 4))
    settle(cluster, ticks=2)
    host = cluster.hosts[2]
    host.start(seed=7)
    assert host.node.memberships.current == Membership((1, 2, 3), (4,))
    assert host.node.membership_at(1) == Membership((1, 2, 3))


def test_a_snapshot_carries_the_membership_to_a_node_added_after_compaction():
    cluster = started()
    leader = cluster.node(1)
    leader.propose_membership(change("add-learner", 5))
    settle(cluster, ticks=2)
    for i in range(6):
        leader.propose(b"x%d" % i)
    settle(cluster)
    host = cluster.hosts[1]
    host.take_snapshot()
    settle(cluster)
    host.after_advance()
    settle(cluster)
    assert host.storage.first_index() > 2  # the membership entry is compacted
    leader.propose_membership(change("add-learner", 4))
    settle(cluster, ticks=3)
    joined = cluster.node(4)
    assert joined.memberships.current == Membership((1, 2, 3), (4, 5))
    assert cluster.hosts[4].storage.snapshot().learners == (5,)
    assert joined.log.last_index() == leader.log.last_index()


def test_a_node_that_is_not_a_member_starts_no_election():
    node = RaftNode(RaftConfig(id=4, voters=(1, 2, 3)), MemoryStorage(), random.Random(1))
    for _ in range(100):
        node.tick()
    assert node.role == Role.FOLLOWER and not node.ready().persisted_messages


# ------------------------------------------------------------------------------ the fix, shown


VOTES = (MT.PRE_VOTE, MT.PRE_VOTE_RESPONSE, MT.VOTE, MT.VOTE_RESPONSE)


def _deposed_change_then_new_leader(node_class: type[RaftNode]) -> tuple[Cluster, int]:
    """Four voters. Leader 1 adds voter 5, reaching only node 5, and loses its quorum; node 2
    is elected without that entry, its no-op not yet replicated. Returns the cluster and the
    index of 1's uncommitted change."""
    cluster = Cluster((1, 2, 3, 4), spares=(5,), node_class=node_class, pre_vote=False)
    cluster.elect(1)
    cluster.node(1).propose(b"first")
    settle(cluster)
    cluster.cut = {2, 3, 4}
    old = cluster.node(1)
    pending = old.propose_membership(change("add-voter", 5))
    cluster.process_all()
    cluster.deliver(keep=lambda m: m.type == MT.APPEND)  # node 5 appends it; nothing commits
    cluster.queue.clear()
    cluster.cut = {1, 5}
    for _ in range(2 * old.config.election_ticks):
        old.tick()  # check-quorum: it hears from no majority and steps down
    assert old.role == Role.FOLLOWER
    for node_id in (3, 4):
        # Their leader's lease has run out: they take vote requests again.
        cluster.node(node_id).election_elapsed = cluster.node(node_id).config.election_ticks
    cluster.node(2).campaign()
    cluster.stabilize(keep=lambda m: m.type in VOTES)
    assert cluster.node(2).role == Role.LEADER and cluster.node(2).term == 2
    return cluster, pending


def test_a_fresh_leader_refuses_a_change_beside_a_deposed_leaders_uncommitted_one():
    cluster, _ = _deposed_change_then_new_leader(RaftNode)
    with pytest.raises(MembershipChangeError, match="not yet committed an entry of its term"):
        cluster.node(2).propose_membership(change("remove", 1))


def test_without_the_fix_two_majorities_commit_conflicting_logs():
    """The single-server bug the rule exists for: the new leader removes node 1 at once, and
    commits that with 2 of the 3 voters it then counts; node 1, with its own change, wins the
    next term from nodes 4 and 5, 3 of the 5 voters it counts, and lacks that committed entry."""
    from tests.sim.mutations import MUTATIONS

    cluster, pending = _deposed_change_then_new_leader(MUTATIONS["change-before-term-commit"])
    new = cluster.node(2)
    cluster.cut = {1, 4, 5}
    removal = new.propose_membership(change("remove", 1))
    settle(cluster, ticks=2)  # heartbeats expose the appends dropped during the election
    assert new.log.committed >= removal  # committed by nodes 2 and 3
    cluster.cut = {2, 3}
    old = cluster.node(1)
    for _ in range(2):  # term 2 is taken (node 4 voted for node 2 in it): then term 3
        cluster.node(4).election_elapsed = cluster.node(4).config.election_ticks
        old.campaign()
        settle(cluster)
    assert old.role == Role.LEADER and old.term > new.term
    assert old.log.term(pending) == 1  # its own change, where the committed removal was
    assert not old.log.match_term(removal, new.term)


def test_a_change_that_leaves_no_live_majority_needs_force():
    cluster = started()
    leader = cluster.node(1)
    cluster.cut = {3}
    settle(cluster, ticks=2 * leader.config.election_ticks)  # check-quorum marks node 3 silent
    assert leader.role == Role.LEADER
    with pytest.raises(MembershipChangeError, match=r"1 of its 2 voters would be live \(1\), short of a majority of 2"):
        leader.propose_membership(change("remove", 2))
    assert not leader.status().membership_pending
    # Removing the silent node leaves two live voters of two: allowed.
    index = leader.propose_membership(change("remove", 3))
    settle(cluster)
    assert leader.log.committed >= index


def test_force_takes_a_change_that_leaves_no_live_majority():
    cluster = started()
    leader = cluster.node(1)
    cluster.cut = {3}
    settle(cluster, ticks=2 * leader.config.election_ticks)
    index = leader.propose_membership(change("remove", 2), force=True)
    assert leader.status().membership_index == index and leader.voters.voters == (1, 3)


def test_a_new_leader_stops_replicating_to_a_node_whose_inherited_removal_commits():
    cluster = started(ids=(1, 2, 3, 4, 5), spares=())
    cluster.cut = {3, 4, 5}
    cluster.node(1).propose_membership(change("remove", 5), force=True)
    cluster.process_all()
    cluster.deliver(keep=lambda m: m.type == MT.APPEND)  # only node 2 has the removal
    cluster.queue.clear()
    cluster.cut = {1, 5}
    for node_id in (3, 4):
        cluster.node(node_id).election_elapsed = cluster.node(node_id).config.election_ticks
    node2 = cluster.node(2)
    node2.campaign()
    cluster.stabilize(keep=lambda m: m.type in VOTES)
    assert node2.role == Role.LEADER and 5 in node2.progress  # replicated to until it commits
    cluster.cut = {1}
    settle(cluster, ticks=3)
    assert node2.voters.voters == (1, 2, 3, 4) and not node2.status().membership_pending
    assert 5 not in node2.progress
