"""Where the members are: the address of every node this node links with, kept in step with the
replicated membership.

The core's membership names nodes by id only; the host attaches each member's address (one
host:port for peers and clients) as the membership's context, a JSON object written by the
leader that proposes a change (docs/operations.md, "Membership"):

    {"addresses": {"1": "10.0.0.1:7101", "2": "10.0.0.2:7101", ...}}

A cluster that never changed its membership has no context: its addresses are the --peers it
was started with. A node links with every member of the membership in force, and also with the
nodes a change removed until that change commits and a grace period later: a leader that
removes itself leads until then, and a removed node needs the leader's last append to learn
that its removal committed.
"""

from __future__ import annotations

import json
import logging

from eventstream.config import ConfigError, parse_address
from eventstream.raft.membership import Membership
from eventstream.raft.node import RaftNode, Role

log = logging.getLogger(__name__)

ADDRESSES_KEY = "addresses"


class AddressError(ValueError):
    """A membership context that does not carry a valid address map."""


def encode_addresses(addresses: dict[int, str]) -> bytes:
    return json.dumps({ADDRESSES_KEY: {str(node): addresses[node] for node in sorted(addresses)}},
                      separators=(",", ":")).encode()


def decode_addresses(context: bytes) -> dict[int, str]:
    """The address map in a membership's context ({} for a membership without one)."""
    if not context:
        return {}
    try:
        value = json.loads(context)
        table = value[ADDRESSES_KEY]
        out = {int(node): str(address) for node, address in table.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AddressError(f"membership context is not an address map: {exc}") from None
    for node, address in out.items():
        if node < 1:
            raise AddressError(f"membership context names node id {node}")
        try:
            parse_address(f"members[{node}]", address)
        except ConfigError as exc:
            raise AddressError(str(exc)) from None
    return out


def membership_addresses(membership: Membership, known: dict[int, str]) -> dict[int, str]:
    """Each member's address: from the membership's context, else from `known`."""
    try:
        attached = decode_addresses(membership.context)
    except AddressError as exc:
        log.warning("%s; using the addresses known before it", exc)
        attached = {}
    return {node: attached.get(node, known.get(node, "")) for node in membership.members}


class MemberDirectory:
    """The addresses this node links with, from the membership in force.

    `addresses` is one dict, updated in place, that the reply path (leader hints) and the status
    page read; `links` is {id: (host, port)} of every other node to link with, a new dict each
    time refresh() reports that it changed (PeerRouting.set_peers)."""

    def __init__(self, node_id: int, raft: RaftNode, static: dict[int, str], grace_s: float) -> None:
        self.node_id = node_id
        self.raft = raft
        self.grace_s = grace_s
        self.addresses: dict[int, str] = dict(static)  # every node ever known, latest address
        self.links: dict[int, tuple[str, int]] = {}
        # Whether this node has been a member (a joining node is not one until added: it keeps
        # its links to the members so that they can reach it).
        self.was_member = False
        self._seen: tuple[int, int, bool] | None = None
        self._leaving: dict[int, float] = {}  # removed node -> when its link goes

    def current(self) -> dict[int, str]:
        """The members of the membership in force and their addresses."""
        return membership_addresses(self.raft.memberships.current, self.addresses)

    def context_for(self, members: dict[int, str]) -> bytes:
        return encode_addresses(members)

    def refresh(self, now: float) -> bool:
        """Follow the core's membership; whether `links` changed. Cheap when nothing did (it
        runs after every Ready)."""
        raft = self.raft
        history = raft.memberships
        settled = history.latest_index <= raft.log.committed
        key = (history.latest_index, len(raft.progress) if raft.role == Role.LEADER else -1, settled)
        if key == self._seen and not self._leaving:
            return False
        self._seen = key
        wanted = set(history.current.members)
        if self.node_id in wanted:
            self.was_member = True
        elif self.was_member and settled:
            wanted = set()  # this node's removal committed: it links with no one (after the grace)
        self.addresses.update({n: a for n, a in self.current().items() if a})
        if not settled:
            # Until the change commits, its removed nodes still take part (a leader removing
            # itself leads until then).
            wanted.update(history.at(raft.log.committed).members if raft.log.committed >= history.base_index
                          else ())
        if raft.role == Role.LEADER:
            wanted.update(raft.progress)  # the core replicates to them still
        wanted.discard(self.node_id)
        for node in list(self.links):
            if node not in wanted and node not in self._leaving:
                self._leaving[node] = now + self.grace_s
        for node in wanted:
            self._leaving.pop(node, None)
        links = {node: self.links[node] for node in self.links if node in wanted or
                 self._leaving.get(node, now) > now}
        for node in [n for n, at in self._leaving.items() if at <= now]:
            del self._leaving[node]
        for node in wanted:
            address = self.addresses.get(node)
            if not address:
                log.warning("node %d: no address known for member %d; not linking with it", self.node_id, node)
                continue
            links[node] = parse_address(f"members[{node}]", address)
        if links != self.links:
            added = sorted(set(links) - set(self.links))
            gone = sorted(set(self.links) - set(links))
            if self.links or gone:
                log.info("node %d: peer links follow the membership: voters %s, learners %s; linking %s, dropping %s",
                         self.node_id, history.current.voters, history.current.learners, added or "-", gone or "-")
            self.links = links
            return True
        return False
