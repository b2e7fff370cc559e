"""The state machine's side of a Ready in the node: apply committed entries, answer the appends
and config updates waiting on them, stage and install a leader's snapshot, serve reads."""

from __future__ import annotations

from collections.abc import Callable

from eventstream.metrics import NodeMetrics
from eventstream.node.answers import AppendAnswers
from eventstream.node.clock import Clock
from eventstream.node.proposal_clock import ProposalClock
from eventstream.node.reads import Reads
from eventstream.node.routing import LateEntries
from eventstream.node.snapshots import Snapshots
from eventstream.raft.membership import decode_membership_entry
from eventstream.raft.messages import Entry, SnapshotChunk, SnapshotMeta
from eventstream.raft.node import ReadState
from eventstream.state import EVENT_COMMANDS, CommandType, StateMachine
from eventstream.transport.client_protocol import Status


class NodeApplier:
    """ReadyApplier for the node (eventstream/node/ready.py)."""

    def __init__(self, state: StateMachine, answers: AppendAnswers, reads: Reads, snapshots: Snapshots,
                 late: LateEntries, proposal_clock: ProposalClock, metrics: NodeMetrics, clock: Clock,
                 after_advance: Callable[[], None], membership_applied: Callable[[int, int], None]) -> None:
        self.state = state
        self.answers = answers
        self.reads = reads
        self.snapshots = snapshots
        self.late = late
        self.proposal_clock = proposal_clock
        self.metrics = metrics
        self.clock = clock
        self.after_advance = after_advance
        self.membership_applied = membership_applied  # (index, term): answers the change's request

    def stage_snapshot_chunks(self, chunks: list[SnapshotChunk]) -> None:
        self.snapshots.stage(chunks)

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        self.snapshots.install(meta.index, meta.term)
        self.reads.serve_confirmed()

    def confirm_reads(self, read_states: list[ReadState], dropped: list[bytes]) -> None:
        self.reads.confirm(read_states, dropped)
        self.reads.serve_confirmed()

    def apply(self, entries: list[Entry]) -> None:
        state, answers, metrics = self.state, self.answers, self.metrics
        metrics.commits.inc(len(entries))
        in_late_window = self.late.in_window(self.clock.monotonic())
        late_through = self.late.through
        waiting = answers.waiting
        for entry in entries:
            if entry.index <= state.applied_index:
                continue  # already in the state machine's snapshot (replay after restart)
            result = state.apply(entry.index, entry.term, entry.data)
            waiters = waiting.pop(entry.index, None)
            if result.first_seen_us is not None:
                self.proposal_clock.observe(result.first_seen_us,
                                            live=entry.index > late_through and not in_late_window)
            if result.command in EVENT_COMMANDS:
                assert result.statuses is not None and result.queues is not None and result.offsets is not None
                metrics.events_applied.inc(len(result.statuses))
                if waiters is not None:
                    if waiters.term == entry.term:
                        answers.answer(entry.index, waiters.waiters, result.statuses, result.queues, result.offsets)
                    else:
                        answers.fail(waiters.waiters, Status.NOT_LEADER, "entry replaced by a new leader; retry")
            elif waiters is not None:
                answers.fail(waiters.waiters, Status.INTERNAL, f"entry {entry.index} held another command")
            if result.command == CommandType.MEMBERSHIP:
                membership = decode_membership_entry(entry.data)
                metrics.membership_changes.inc()
                metrics.voters.set(len(membership.voters))
                metrics.learners.set(len(membership.learners))
                self.membership_applied(entry.index, entry.term)
            if result.command == CommandType.CONFIG_UPDATE:
                answers.intake.queue_count = state.config["queue_count"]
                answers.answer_config(entry.index)
        metrics.applies.inc(len(entries))
        metrics.dedup_ids.set(len(state.dedup))
        metrics.dedup_generated_ids.set(state.dedup.generated_count)
        metrics.applied_index.set(state.applied_index)
        metrics.commit_index.set(entries[-1].index)
        self.reads.serve_confirmed()
