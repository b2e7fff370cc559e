"""Configuration of one Raft node, validated once at construction (docs/conventions.md §12)."""

from __future__ import annotations

from dataclasses import dataclass

# How many full pipeline windows of uncommitted entries a leader may hold. A tail far longer than
# what the pipeline carries per round trip takes that many round trips to commit after a stall
# (a partition heals, a follower returns), and meanwhile every client waits behind it; eight
# windows keep the pipeline full without letting the backlog outgrow it (docs/raft.md).
UNCOMMITTED_ROUNDS = 8


class ConfigError(ValueError):
    """A configuration value or relationship that cannot work; the message names the key."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tunables of the consensus core. Times are in ticks of the host's clock.

    Invariant: election_ticks > heartbeat_ticks >= 1, so a healthy leader's heartbeats always
    arrive before a follower's election timeout (§5.2: broadcastTime << electionTimeout).
    """

    id: int
    # Voters used when storage holds no configuration yet (a brand-new cluster).
    voters: tuple[int, ...]
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    # In-flight AppendEntries per follower in replicate state (pipelining window), by count and bytes.
    max_inflight: int = 256
    max_inflight_bytes: int = 64 << 20
    # Upper bound on the entry bytes of one AppendEntries message (one entry may exceed it alone).
    max_append_bytes: int = 1 << 20
    # Largest payload `propose` accepts.
    max_entry_bytes: int = 4 << 20
    # Proposals are refused while the leader's uncommitted tail holds more than this, or more
    # than UNCOMMITTED_ROUNDS pipeline windows (see uncommitted_limit).
    max_uncommitted_bytes: int = 64 << 20
    # Upper bound on the entry bytes of one Ready's committed_entries (one entry may exceed it).
    max_apply_bytes: int = 64 << 20
    # Size of one InstallSnapshot chunk.
    snapshot_chunk_bytes: int = 1 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    # How a leader tells followers that the commit index moved. False: at once, with an
    # AppendEntries to every follower (empty when it has no new entries). True: with the next
    # AppendEntries that carries entries anyway, or at the next tick for a follower that got
    # none: under load the commit rides on the next entries instead of costing every follower
    # one more message, ack and Ready per entry; an idle follower learns it within a tick.
    lazy_commit: bool = False
    # Index the host's state machine had already applied when this node starts (0: use storage's
    # snapshot index).
    applied: int = 0
    # This node lost its log, term and vote (a replaced disk) and starts again into a cluster
    # that has them. Raft counts every vote and every acknowledgement as a promise about the
    # voter's durable state, which this node forgot: it could vote twice in a term, vote for a
    # candidate missing entries it acknowledged, or acknowledge a deposed leader of a term it
    # had already left. So (the "rejoining" section of node.py) it first learns the terms of a
    # majority of its peers and takes the highest, and until it durably holds everything a
    # leader of at least that term has committed (RaftNode.withholding_votes), it grants no
    # vote and starts no election.
    rejoining: bool = False
    # A learner is promoted to voter only when its log is at most this many entries behind the
    # leader's: a voter far behind would leave the cluster one failure from stalling while it
    # catches up, its vote counted in every majority but its acknowledgements not yet coming.
    max_promotion_lag: int = 1000
    # Promote each learner as soon as it is within max_promotion_lag (the leader proposes it).
    auto_promote: bool = False

    def __post_init__(self) -> None:
        if self.id <= 0:
            raise ConfigError(f"id must be a positive integer, got {self.id}")
        if not self.voters:
            raise ConfigError("voters must name at least one node")
        if len(set(self.voters)) != len(self.voters):
            raise ConfigError(f"voters contains duplicates: {self.voters}")
        if any(v <= 0 for v in self.voters):
            raise ConfigError(f"voter ids must be positive integers: {self.voters}")
        if self.heartbeat_ticks < 1:
            raise ConfigError(f"heartbeat_ticks must be >= 1, got {self.heartbeat_ticks}")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                f"election_ticks ({self.election_ticks}) must be greater than heartbeat_ticks "
                f"({self.heartbeat_ticks})"
            )
        for name in (
            "max_inflight",
            "max_inflight_bytes",
            "max_append_bytes",
            "max_entry_bytes",
            "max_uncommitted_bytes",
            "max_apply_bytes",
            "snapshot_chunk_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_uncommitted_bytes < self.max_entry_bytes:
            raise ConfigError(
                f"max_uncommitted_bytes ({self.max_uncommitted_bytes}) must be >= max_entry_bytes "
                f"({self.max_entry_bytes}), or a maximal entry could never be proposed"
            )
        if self.max_promotion_lag < 0:
            raise ConfigError(f"max_promotion_lag must be >= 0, got {self.max_promotion_lag}")
        if self.applied < 0:
            raise ConfigError(f"applied must be >= 0, got {self.applied}")

    @property
    def uncommitted_limit(self) -> int:
        """Bytes of uncommitted tail beyond which a leader refuses proposals: the configured
        bound, or UNCOMMITTED_ROUNDS times what one pipeline window carries, whichever is less."""
        window = min(self.max_inflight * self.max_append_bytes, self.max_inflight_bytes)
        return min(self.max_uncommitted_bytes, UNCOMMITTED_ROUNDS * window)
