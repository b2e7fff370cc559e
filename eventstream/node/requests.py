"""Client requests other than the APPENDs the native intake queues, and the proposals made
from them: entries of queued appends, config updates, dedup expiry."""

from __future__ import annotations

import logging
from collections.abc import Callable

from eventstream.config import NodeConfig
from eventstream.metrics import NodeMetrics
from eventstream.node.answers import AppendAnswers, Replies, TermWaiters
from eventstream.node.auth import Authority, Grants, describe
from eventstream.node.member_requests import MemberRequests
from eventstream.node.proposal_clock import ProposalClock
from eventstream.node.reads import Reads
from eventstream.node.snapshots import Snapshots
from eventstream.node.status import StatusReporter
from eventstream.raft.messages import NONE
from eventstream.raft.node import (
    NotLeaderError,
    ProposalError,
    RaftNode,
    Role,
    TransferInProgressError,
    UncommittedLimitError,
)
from eventstream.state import ConfigError, StateMachine, encode_config_update, validate_config
from eventstream.state.config import merge_config
from eventstream.transport._append_intake import (
    REFUSED_INVALID,
    REFUSED_NOT_ACCEPTING,
    REFUSED_OVERLOADED,
    REFUSED_QUEUE_DENIED,
    AppendIntake,
)
from eventstream.transport.client_protocol import (
    Op,
    ProtocolError,
    Request,
    Status,
    decode_json_object,
    decode_read,
    decode_status_options,
    encode_json,
    encode_response,
)
from eventstream.transport.client_server import ClientSession, Refusal

log = logging.getLogger(__name__)


class ClientRequests:
    """Client requests the node's client server passes on (Node implements its ClientService by
    handing them here; see eventstream/transport/client_server.py)."""

    def __init__(self, config: NodeConfig, raft: RaftNode, state: StateMachine, intake: AppendIntake,
                 answers: AppendAnswers, replies: Replies, reads: Reads, snapshots: Snapshots,
                 status: StatusReporter, members: MemberRequests, proposal_clock: ProposalClock,
                 metrics: NodeMetrics, wake: Callable[[], None]) -> None:
        self.config = config
        self.raft = raft
        self.state = state
        self.intake = intake
        self.answers = answers
        self.replies = replies
        self.reads = reads
        self.snapshots = snapshots
        self.status = status
        self.members = members
        self.auth = Authority(state)
        self.proposal_clock = proposal_clock
        self.metrics = metrics
        self._wake = wake

    def on_request(self, session: ClientSession, request: Request) -> None:
        op = request.op
        if op == Op.AUTH:
            self._on_auth(session, request)
            return
        if self.auth.enabled and self._refused_by_token(session, request):
            return
        # APPENDs come here only past a connection's in-flight limit (answered there): the
        # intake queues all others natively.
        if op == Op.READ:
            if self.reads.on_read(session, request):
                self._wake()
        elif op == Op.STATUS:
            self.status.on_request(session, request)
        elif op == Op.CONFIG_GET:
            session.reply(encode_response(Status.OK, request.request_id, encode_json(self.state.config)))
        elif op == Op.CONFIG_UPDATE:
            self._on_config_update(session, request)
        elif op == Op.SNAPSHOT:
            started = self.snapshots.trigger()
            session.reply(encode_response(Status.OK, request.request_id, encode_json(
                {"started": started, "applied": self.state.applied_index, "last_snapshot": self.snapshots.last_index})))
        elif op == Op.MEMBERS:
            self.members.on_members(session, request)
        elif op == Op.MEMBER_CHANGE:
            self.members.on_change(session, request)
            self._wake()
        else:  # decode_request only yields known ops; a new op must be handled above
            self.replies.error(session, request.request_id, Status.INVALID_ARGUMENT, f"unsupported op {op}")

    def _on_auth(self, session: ClientSession, request: Request) -> None:
        token = bytes(request.body).decode(errors="replace")
        if not self.auth.enabled:  # no token exists yet: every request is taken
            # This node may lag behind the cluster's first token: keep what was presented so
            # the session's grants are known once the token reaches this node's state.
            session.presented_token = token
            session.reply(encode_response(Status.OK, request.request_id, encode_json({"name": None, "allow": []})))
            return
        grants = self.auth.authenticate(token)
        session.presented_token = None
        if grants is None:
            session.grants = None
            self.replies.error(session, request.request_id, Status.UNAUTHENTICATED, "unknown or revoked token")
            return
        session.grants = grants
        self.intake.set_append_queues(session.slot, grants.append_limit)
        session.reply(encode_response(Status.OK, request.request_id, encode_json(describe(grants))))

    def _refused_by_token(self, session: ClientSession, request: Request) -> bool:
        """Answer a request its session's token does not allow; whether it was refused."""
        queue, digest = None, False
        try:
            if request.op == Op.READ:
                queue = decode_read(request.body).queue
            elif request.op == Op.STATUS:
                digest = bool(decode_status_options(request.body).get("digest"))
        except ProtocolError:
            pass  # the op's own handler answers the malformed body
        refusal = self.auth.refusal(self._grants(session), request.op, queue, digest,
                                    node_certificate=session.conn.certified_node is not None)
        if refusal is None:
            return False
        self.replies.error(session, request.request_id, *refusal)
        return True

    def may_see_digest(self, token: str | None) -> bool:
        """Whether an HTTP request bearing `token` may have the state digest (admin)."""
        if not self.auth.enabled:
            return True
        grants = self.auth.authenticate(token) if token else None
        return grants is not None and grants.admin

    def is_admin_token(self, token: str) -> bool:
        """Whether `token` is a valid admin token (False while the cluster has no tokens)."""
        grants = self.auth.authenticate(token) if self.auth.enabled else None
        return grants is not None and grants.admin

    def _grants(self, session: ClientSession) -> Grants | None:
        """The session's grants as the config stands now (the native intake's queue limit kept
        in step): tokens can be created, narrowed, widened or all removed while it is open."""
        grants = session.grants
        if isinstance(grants, Grants):
            if not self.auth.enabled:  # every token removed: the cluster takes any request again
                session.grants = None
                if grants.append_limit is not None:
                    self.intake.set_append_queues(session.slot, None)
                return None
            fresh = self.auth.current(grants)
            if fresh is not grants:
                session.grants = fresh
                if fresh.append_limit != grants.append_limit:
                    self.intake.set_append_queues(session.slot, fresh.append_limit)
            return fresh
        token = session.presented_token
        if token is not None and self.auth.enabled:
            session.presented_token = None
            found = self.auth.authenticate(token)
            if found is not None:
                session.grants = found
                self.intake.set_append_queues(session.slot, found.append_limit)
            return found
        return None

    def _leader_check(self, session: ClientSession, request_id: int) -> bool:
        raft = self.raft
        if raft.role == Role.LEADER:
            if raft.lead_transferee != NONE:
                self.replies.error(session, request_id, Status.UNAVAILABLE, "leadership is being transferred; retry")
                return False
            return True
        self.replies.not_leader(session, request_id)
        return False

    def accepting_appends(self, session: ClientSession) -> bool:
        raft = self.raft
        return (raft.role == Role.LEADER and raft.lead_transferee == NONE
                and self.auth.may_append(self._grants(session)))

    def on_refused_appends(self, refusals: list[Refusal]) -> None:
        for session, request_id, code, message in refusals:
            if code == REFUSED_INVALID:
                self.replies.error(session, request_id, Status.INVALID_ARGUMENT, message or "bad append")
            elif code == REFUSED_QUEUE_DENIED:
                self.replies.error(session, request_id, Status.PERMISSION_DENIED, message or "queue not allowed")
            elif code == REFUSED_OVERLOADED:
                self.replies.error(session, request_id, Status.OVERLOADED, "leader's proposal queue is full; back off")
            else:
                assert code == REFUSED_NOT_ACCEPTING
                refusal = self.auth.refusal(self._grants(session), Op.APPEND)
                if refusal is not None:
                    self.replies.error(session, request_id, *refusal)
                else:
                    self._leader_check(session, request_id)  # answers the refusal

    def _on_config_update(self, session: ClientSession, request: Request) -> None:
        if not self._leader_check(session, request.request_id):
            return
        try:
            changes = decode_json_object(request.body)
            checked = validate_config(changes)
            if "tokens" in checked:
                after = merge_config(self.state.config, checked).get("tokens", {})
                if after and not any("admin" in t["allow"] for t in after.values()):
                    raise ConfigError("tokens: at least one token must allow admin, or no one could manage "
                                      "tokens (create an admin token first; revoke the last one only with none left)")
            data = encode_config_update(checked)
        except (ProtocolError, ConfigError) as exc:
            self.replies.error(session, request.request_id, Status.INVALID_ARGUMENT, str(exc))
            return
        index = self.propose_command(data)
        if index is None:
            self.replies.error(session, request.request_id, Status.UNAVAILABLE, "config change not proposed; retry")
            return
        # Answered once applied: the reply shows the config in force after the change.
        self.answers.config_waiters.setdefault(index, []).append((session, request.request_id))

    def flush_proposals(self) -> None:
        """Propose what the intake has queued, as entries of at most batch_size events."""
        raft, intake, answers = self.raft, self.intake, self.answers
        if not len(intake):
            return
        if raft.role != Role.LEADER:
            answers.fail(intake.drain(), Status.NOT_LEADER, "leadership changed; retry")
            return
        # The cluster's time of first sight for every id in the entries (SET_EVENT_AT): the
        # dedup window runs from here, not from the events' own timestamps.
        now_us = self.proposal_clock.now_us()
        while len(intake):
            taken = intake.take(self.config.batch_size, self.config.batch_bytes_max, now_us)
            assert taken is not None  # requests are waiting
            data, waiters = taken
            try:
                index = raft.propose(data)
            except UncommittedLimitError as exc:
                answers.fail(waiters, Status.OVERLOADED, str(exc))
                continue
            except TransferInProgressError as exc:
                answers.fail(waiters, Status.UNAVAILABLE, str(exc))
                continue
            except NotLeaderError:
                answers.fail(waiters, Status.NOT_LEADER, "leadership changed; retry")
                continue
            answers.waiting[index] = TermWaiters(raft.term, waiters)
            self.metrics.proposals.inc()
            self.metrics.events_proposed.inc(waiters.event_count)

    def propose_command(self, data: bytes) -> int | None:
        try:
            index = self.raft.propose(data)
        except ProposalError as exc:
            log.info("command not proposed: %s", exc)
            return None
        self.metrics.proposals.inc()
        self._wake()
        return index
