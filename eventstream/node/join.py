"""Joining a running cluster (--join): learn its membership before the core starts.

A joining node has no --peers: it asks the members it was given for the membership (MEMBERS),
starts its core with that membership (this node outside it, or in it when the operator added it
first), and takes part once added: the leader then replicates to it, and the entries it
receives carry every later change. What the first join learned is kept in DATA_DIR/JOINED, so
a restart needs no member to answer, and never starts the node as a cluster of its own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eventstream.config import ConfigError, NodeConfig
from eventstream.errors import EscError
from eventstream.node.members import encode_addresses
from eventstream.raft.membership import Membership, MembershipError
from eventstream.storage.atomic_file import write_atomically

log = logging.getLogger(__name__)

JOINED_FILE = "JOINED"
# How long a joining node keeps asking the members it was given.
JOIN_TIMEOUT_S = 30.0


class JoinError(ConfigError):
    """The node cannot join: no member answered, or the membership says it cannot be this node."""


@dataclass(frozen=True, slots=True)
class JoinedCluster:
    membership: Membership  # as learned, with the members' addresses as its context
    addresses: dict[int, str]


def joined_from_view(config: NodeConfig, view: dict[str, Any]) -> JoinedCluster:
    """The cluster as a MEMBERS answer describes it, checked against this node's config."""
    try:
        voters = [int(n) for n in view["voters"]]
        learners = [int(n) for n in view["learners"]]
        addresses = {int(n): str(row["address"]) for n, row in view["members"].items() if row.get("address")}
        membership = Membership.of(voters, learners)
    except (KeyError, TypeError, ValueError, AttributeError, MembershipError) as exc:
        raise JoinError(f"join: the members' answer is not a membership: {exc}") from None
    own = addresses.get(config.id)
    if config.id in membership.members and own != config.listen:
        raise JoinError(f"join: node id {config.id} is already a member at {own}, not at {config.listen}: "
                        "give this node another id, or remove that member first")
    holder = next((n for n, a in addresses.items() if a == config.listen and n != config.id), None)
    if holder is not None:
        raise JoinError(f"join: {config.listen} is the address of member {holder}")
    return JoinedCluster(Membership.of(voters, learners, encode_addresses(addresses)), addresses)


def load_joined(config: NodeConfig) -> JoinedCluster | None:
    path = config.data_path / JOINED_FILE
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise JoinError(f"join: {path} is unreadable ({exc}); move it aside to join afresh") from None
    return joined_from_view(config, stored)


def save_joined(config: NodeConfig, view: dict[str, Any]) -> None:
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    keep = {"voters": view["voters"], "learners": view["learners"], "members": view["members"]}
    write_atomically(str(config.data_path / JOINED_FILE), json.dumps(keep, sort_keys=True).encode())


async def join_cluster(config: NodeConfig, timeout_s: float = JOIN_TIMEOUT_S) -> JoinedCluster:
    """The membership to start a joining node with: kept from its first join, else asked of
    the members in config.join (retrying for timeout_s)."""
    kept = load_joined(config)
    if kept is not None:
        return kept
    from eventstream.client import AsyncClient
    from eventstream.tls import peer_context

    # Over TLS the node presents its own certificate: that is what lets it ask without a token
    # (eventstream/node/auth.py).
    tls = peer_context(config.tls_dir, config.id) if config.tls_dir else None
    client = AsyncClient(config.join_addresses, timeout_s=timeout_s, attempt_timeout_s=min(3.0, timeout_s), tls=tls)
    try:
        view = await client.members()
    except EscError as exc:
        raise JoinError(f"join: no member at {config.join} answered: {exc}") from None
    finally:
        await client.close()
    joined = joined_from_view(config, view)
    save_joined(config, view)
    log.info("node %d: joined a cluster of voters %s, learners %s; it takes part once added "
             "(esc member add %d=%s)", config.id, joined.membership.voters, joined.membership.learners,
             config.id, config.listen)
    return joined

