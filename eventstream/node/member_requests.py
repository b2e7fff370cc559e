"""The MEMBERS and MEMBER_CHANGE requests: show the membership, and propose one change at a time,
answered once the change is applied (docs/operations.md, "Membership").

The core refuses what would be unsafe (a change pending, a new term without a commit, a
promotion of a learner that lags, the last voter, too few live voters after it); this module
adds what only the host knows, addresses: an added node needs one, and one no other member has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from eventstream.config import ConfigError, parse_address
from eventstream.node.answers import Replies
from eventstream.node.members import MemberDirectory, encode_addresses
from eventstream.raft.membership import ChangeKind, MembershipChange
from eventstream.raft.messages import NONE
from eventstream.raft.node import (
    MembershipChangeError,
    NotLeaderError,
    ProposalError,
    RaftNode,
    Role,
    TransferInProgressError,
)
from eventstream.transport.client_protocol import (
    ProtocolError,
    Request,
    Status,
    decode_json_object,
    encode_json,
    encode_response,
)
from eventstream.transport.client_server import ClientSession

log = logging.getLogger(__name__)

_CHANGE_KEYS = frozenset({"change", "id", "address", "force"})


class MemberChangeRequest:
    """A MEMBER_CHANGE body, checked: InvalidArgument-worthy problems raise ValueError."""

    __slots__ = ("kind", "node", "address", "force")

    def __init__(self, body: dict[str, Any]) -> None:
        unknown = sorted(set(body) - _CHANGE_KEYS)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} in a membership change")
        try:
            self.kind = ChangeKind(body.get("change"))
        except ValueError:
            raise ValueError(f"change must be one of {', '.join(k.value for k in ChangeKind)}, "
                             f"got {body.get('change')!r}") from None
        node = body.get("id")
        if isinstance(node, bool) or not isinstance(node, int) or node < 1:
            raise ValueError(f"id must be a positive integer, got {node!r}")
        self.node = node
        address = body.get("address")
        if self.kind in (ChangeKind.ADD_LEARNER, ChangeKind.ADD_VOTER):
            if not isinstance(address, str):
                raise ValueError(f"adding node {node} needs its address as host:port")
            try:
                parse_address("address", address)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        elif address is not None:
            raise ValueError(f"{self.kind.value} takes no address")
        self.address: str | None = address
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise ValueError(f"force must be true or false, got {force!r}")
        self.force = force


class MemberRequests:
    def __init__(self, node_id: int, raft: RaftNode, directory: MemberDirectory, replies: Replies,
                 after_propose: Callable[[], None]) -> None:
        self.node_id = node_id
        self.raft = raft
        self.directory = directory
        self.replies = replies
        # Called once a change is appended: links to a new member must exist before the core's
        # next Ready sends to it.
        self._after_propose = after_propose
        self.waiting: dict[int, list[tuple[int, ClientSession, int]]] = {}  # index -> (term, session, request id)

    def view(self) -> dict[str, Any]:
        """The membership in force as this node knows it, with each member's address; the
        leader adds each member's match index and lag."""
        raft = self.raft
        st = raft.status()
        membership = st.membership
        addresses = self.directory.addresses
        members: dict[str, dict[str, Any]] = {}
        last = raft.log.last_index()
        for node in membership.members:
            row: dict[str, Any] = {"role": membership.role_of(node), "address": addresses.get(node)}
            if raft.role == Role.LEADER:
                match = last if node == self.node_id else (raft.progress[node].match if node in raft.progress else 0)
                row["match"] = match
                row["lag"] = last - match
            members[str(node)] = row
        return {
            "voters": list(membership.voters),
            "learners": list(membership.learners),
            "members": members,
            "index": st.membership_index,
            "pending": st.membership_pending,
            "leader": st.leader,
            "leader_address": addresses.get(st.leader) if st.leader != NONE else None,
            "answered_by": self.node_id,
        }

    def on_members(self, session: ClientSession, request: Request) -> None:
        session.reply(encode_response(Status.OK, request.request_id, encode_json(self.view())))

    def on_change(self, session: ClientSession, request: Request) -> None:
        raft, replies, rid = self.raft, self.replies, request.request_id
        if raft.role != Role.LEADER:
            replies.not_leader(session, rid)
            return
        try:
            change = MemberChangeRequest(decode_json_object(request.body))
        except (ProtocolError, ValueError) as exc:
            replies.error(session, rid, Status.INVALID_ARGUMENT, str(exc))
            return
        if raft.log.term(raft.log.committed) != raft.term:
            # A new leader commits an entry of its term first (the core refuses until then):
            # moments after an election, so the client retries rather than the operator.
            replies.error(session, rid, Status.UNAVAILABLE, "a new leader is committing its first entry; retry")
            return
        members = self.directory.current()
        node = change.node
        if self._already_made(change, members):
            # A retry (after a timeout or a new leader) of a change that took effect.
            history = raft.memberships
            if history.latest_index > raft.log.committed:
                self.waiting.setdefault(history.latest_index, []).append((raft.term, session, rid))
            else:
                session.reply(encode_response(Status.OK, rid, encode_json(self.view())))
            return
        if change.kind in (ChangeKind.ADD_LEARNER, ChangeKind.ADD_VOTER):
            if node in members:
                role = raft.memberships.current.role_of(node)
                replies.error(session, rid, Status.REFUSED, f"node id {node} is in use: it is a {role} "
                              f"at {members[node] or 'an unknown address'}; pick another id")
                return
            holder = next((n for n, a in members.items() if a == change.address), None)
            if holder is not None:
                replies.error(session, rid, Status.REFUSED, f"address {change.address} is in use by node {holder}")
                return
            assert change.address is not None
            members = {**members, node: change.address}
        elif change.kind == ChangeKind.REMOVE:
            members = {n: a for n, a in members.items() if n != node}
        try:
            index = raft.propose_membership(MembershipChange(change.kind, node), encode_addresses(members),
                                            force=change.force)
        except NotLeaderError:
            replies.not_leader(session, rid)
            return
        except TransferInProgressError as exc:
            replies.error(session, rid, Status.UNAVAILABLE, str(exc))
            return
        except MembershipChangeError as exc:
            hint = " (--force)" if "force it" in str(exc) else ""
            replies.error(session, rid, Status.REFUSED, f"{exc}{hint}; nothing changed")
            return
        except ProposalError as exc:
            replies.error(session, rid, Status.UNAVAILABLE, f"{exc}; nothing changed")
            return
        log.info("node %d: proposed membership change %s %d at index %d%s", self.node_id, change.kind.value,
                 node, index, " (forced)" if change.force else "")
        self.waiting.setdefault(index, []).append((raft.term, session, rid))
        self._after_propose()

    def _already_made(self, change: MemberChangeRequest, members: dict[int, str]) -> bool:
        role = self.raft.memberships.current.role_of(change.node)
        if change.kind == ChangeKind.ADD_LEARNER:
            return role == "learner" and members.get(change.node) == change.address
        if change.kind == ChangeKind.ADD_VOTER:
            return role == "voter" and members.get(change.node) == change.address
        if change.kind == ChangeKind.PROMOTE:
            return role == "voter"
        return False  # removing a node that is not a member: refused, it may be a typo

    def on_applied(self, index: int, term: int) -> None:
        """A membership entry was applied: answer the change proposed there."""
        for proposed_in, session, rid in self.waiting.pop(index, ()):
            if proposed_in == term:
                session.reply(encode_response(Status.OK, rid, encode_json(self.view())))
            else:
                self.replies.error(session, rid, Status.UNAVAILABLE,
                                   "the change was replaced by a new leader's log and not made; retry")

    def fail_all(self, status: Status, message: str) -> None:
        waiting, self.waiting = self.waiting, {}
        for rows in waiting.values():
            for _, session, rid in rows:
                self.replies.error(session, rid, status, message)
