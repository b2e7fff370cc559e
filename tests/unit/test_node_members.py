"""The node's member directory (eventstream/node/members.py): addresses in the membership's
context, and the peer links that follow the membership in force."""

from __future__ import annotations

import pytest

from eventstream.node.members import (
    AddressError,
    MemberDirectory,
    decode_addresses,
    encode_addresses,
)
from eventstream.raft.membership import ChangeKind, MembershipChange
from tests.unit.raft.cluster import Cluster

STATIC = {1: "10.0.0.1:7101", 2: "10.0.0.2:7101", 3: "10.0.0.3:7101"}
GRACE = 1.0


def test_addresses_round_trip_through_a_membership_context() -> None:
    table = {**STATIC, 4: "[::1]:7104"}
    assert decode_addresses(encode_addresses(table)) == table
    assert decode_addresses(b"") == {}


@pytest.mark.parametrize(("context", "message"), [
    (b"not json", "not an address map"),
    (b'{"other": {}}', "not an address map"),
    (b'{"addresses": {"x": "h:1"}}', "not an address map"),
    (b'{"addresses": {"0": "h:1"}}', "node id 0"),
    (b'{"addresses": {"4": "nowhere"}}', "host:port"),
])
def test_a_context_that_is_not_an_address_map_is_refused(context: bytes, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        decode_addresses(context)


def _cluster() -> Cluster:
    cluster = Cluster((1, 2, 3), spares=(4,))
    cluster.elect(1)
    cluster.stabilize()
    return cluster


def _directory(cluster: Cluster, node: int) -> MemberDirectory:
    directory = MemberDirectory(node, cluster.node(node), {**STATIC, node: STATIC.get(node, "10.0.0.4:7101")}, GRACE)
    directory.refresh(0.0)
    return directory


def _propose(cluster: Cluster, kind: str, node: int, addresses: dict[int, str]) -> int:
    return cluster.node(1).propose_membership(MembershipChange(ChangeKind(kind), node), encode_addresses(addresses))


def test_links_start_from_the_static_peers() -> None:
    directory = _directory(_cluster(), 2)
    assert directory.links == {1: ("10.0.0.1", 7101), 3: ("10.0.0.3", 7101)}
    assert not directory.refresh(0.0)  # nothing changed


def test_a_new_member_is_linked_as_soon_as_its_change_is_appended() -> None:
    cluster = _cluster()
    leader = _directory(cluster, 1)
    _propose(cluster, "add-learner", 4, {**STATIC, 4: "10.0.0.4:7101"})
    assert leader.refresh(0.0)  # before commit: the core replicates to it from now on
    assert leader.links[4] == ("10.0.0.4", 7101)
    follower = _directory(cluster, 2)
    cluster.stabilize()
    follower.refresh(0.0)
    assert follower.links[4] == ("10.0.0.4", 7101) and follower.addresses[4] == "10.0.0.4:7101"
    assert follower.current() == {**STATIC, 4: "10.0.0.4:7101"}


def test_a_removed_member_keeps_its_link_until_its_removal_commits_and_a_grace_period_ends() -> None:
    cluster = _cluster()
    follower = _directory(cluster, 2)
    removed = _directory(cluster, 3)
    _propose(cluster, "remove", 3, {1: STATIC[1], 2: STATIC[2]})
    cluster.process_all()
    cluster.deliver()  # the follower appends the change, not yet knowing it committed
    cluster.process_all()
    assert cluster.node(2).memberships.current.voters == (1, 2)
    assert cluster.node(2).log.committed < cluster.node(2).memberships.latest_index
    follower.refresh(0.0)
    assert 3 in follower.links  # a removed leader would still lead until the change commits
    cluster.stabilize()
    for _ in range(10):
        cluster.node(1).tick()
    cluster.stabilize()
    follower.refresh(0.1)
    assert 3 in follower.links  # committed: the grace period runs
    assert follower.refresh(0.1 + GRACE + 0.01)
    assert 3 not in follower.links and follower.links == {1: ("10.0.0.1", 7101)}
    # The removed node heard that its removal committed: after the grace it links with no one.
    removed.refresh(0.2)
    removed.refresh(0.2 + GRACE + 0.01)
    assert removed.links == {}


def test_a_joining_node_keeps_its_links_to_the_members_until_it_is_added() -> None:
    cluster = _cluster()
    joining = _directory(cluster, 4)  # node 4's core starts with voters 1-3 and itself outside
    assert set(joining.links) == {1, 2, 3}
    for _ in range(100):
        cluster.node(4).tick()
    joining.refresh(5.0)
    assert set(joining.links) == {1, 2, 3}
