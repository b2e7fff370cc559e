"""Tokens and permissions (eventstream/node/auth.py) over the replicated config's `tokens`."""

from __future__ import annotations

from typing import Any, cast

import pytest

from eventstream.node.auth import Authority, Grants, new_token, token_digest
from eventstream.node.requests import ClientRequests
from eventstream.raft.messages import NONE
from eventstream.raft.node import Role
from eventstream.state.config import ConfigError, default_config, merge_config, validate_config
from eventstream.transport.client_protocol import Op, Request, Status


class Config:
    def __init__(self) -> None:
        self.config: dict[str, Any] = default_config()

    def update(self, tokens: dict[str, Any]) -> None:
        self.config = merge_config(self.config, validate_config({"tokens": tokens}))


def _status(refusal: tuple[Status, str] | None) -> Status | None:
    return None if refusal is None else refusal[0]


def _entry(token: str, *allow: str) -> dict[str, Any]:
    return {"sha256": token_digest(token), "allow": list(allow)}


def test_without_tokens_everything_is_allowed() -> None:
    authority = Authority(Config())
    assert not authority.enabled
    assert authority.refusal(None, Op.CONFIG_UPDATE) is None and authority.may_append(None)


def test_each_permission_allows_its_operations_only() -> None:
    source = Config()
    admin, writer, reader = new_token(), new_token(), new_token()
    source.update({"ops": _entry(admin, "admin"), "writer": _entry(writer, "append", "read:0"),
                   "reader": _entry(reader, "read")})
    authority = Authority(source)
    ops, w, r = (authority.authenticate(t) for t in (admin, writer, reader))
    assert ops is not None and w is not None and r is not None
    assert authority.authenticate("esc_wrong") is None
    assert _status(authority.refusal(None, Op.STATUS)) == Status.UNAUTHENTICATED
    assert authority.refusal(ops, Op.CONFIG_UPDATE) is None and authority.refusal(ops, Op.MEMBER_CHANGE) is None
    assert authority.refusal(ops, Op.APPEND) is not None and not authority.may_append(ops)
    assert authority.refusal(w, Op.APPEND) is None and authority.may_append(w)
    assert authority.refusal(w, Op.READ, queue=0) is None
    assert _status(authority.refusal(w, Op.READ, queue=1)) == Status.PERMISSION_DENIED
    assert authority.refusal(r, Op.READ, queue=7) is None
    assert authority.refusal(r, Op.STATUS) is None
    assert _status(authority.refusal(r, Op.STATUS, digest_asked=True)) == Status.PERMISSION_DENIED
    for op in (Op.CONFIG_GET, Op.SNAPSHOT, Op.MEMBER_CHANGE):
        assert _status(authority.refusal(w, op)) == Status.PERMISSION_DENIED
    assert authority.refusal(None, Op.AUTH) is None


def test_a_revoked_or_replaced_token_stops_working_for_sessions_that_hold_it() -> None:
    source = Config()
    first, second = new_token(), new_token()
    source.update({"ops": _entry(first, "admin"), "app": _entry(second, "append")})
    authority = Authority(source)
    app = authority.authenticate(second)
    assert authority.valid(app)
    source.update({"app": None})
    assert not authority.valid(app) and _status(authority.refusal(app, Op.APPEND)) == Status.UNAUTHENTICATED
    source.update({"app": _entry(new_token(), "append")})  # same name, another secret
    assert not authority.valid(app)


@pytest.mark.parametrize(("tokens", "message"), [
    ({"bad name!": {"sha256": "0" * 64, "allow": ["read"]}}, "name"),
    ({"a": {"sha256": "xyz", "allow": ["read"]}}, "64 lowercase hex"),
    ({"a": {"sha256": "0" * 64, "allow": []}}, "non-empty list"),
    ({"a": {"sha256": "0" * 64, "allow": ["write"]}}, "'write' is not one of"),
    ({"a": {"sha256": "0" * 64}}, "or null"),
    ("all", "mapping of name"),
])
def test_a_malformed_token_entry_is_refused(tokens: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config({"tokens": tokens})


def test_a_config_without_tokens_keeps_its_digest_inputs() -> None:
    """Clusters that never made a token hold no `tokens` key: their state digest is unchanged."""
    assert "tokens" not in default_config()


def test_a_node_certificate_allows_what_a_joining_node_asks_and_nothing_else() -> None:
    source = Config()
    source.update({"ops": _entry(new_token(), "admin")})
    authority = Authority(source)
    assert authority.refusal(None, Op.MEMBERS, node_certificate=True) is None
    assert authority.refusal(None, Op.STATUS, node_certificate=True) is None
    assert _status(authority.refusal(None, Op.STATUS, digest_asked=True, node_certificate=True)) \
        == Status.UNAUTHENTICATED
    for op in (Op.APPEND, Op.READ, Op.CONFIG_GET, Op.CONFIG_UPDATE, Op.SNAPSHOT, Op.MEMBER_CHANGE):
        assert _status(authority.refusal(None, op, node_certificate=True)) == Status.UNAUTHENTICATED
    assert _status(authority.refusal(None, Op.MEMBERS)) == Status.UNAUTHENTICATED


class _Intake:
    def __init__(self) -> None:
        self.limits: dict[int, object] = {}

    def set_append_queues(self, slot: int, limit: object) -> None:
        self.limits[slot] = limit


class _Replies:
    def __init__(self) -> None:
        self.errors: list[tuple[Status, str]] = []

    def error(self, session: object, request_id: int, status: Status, message: str, leader_id: int = 0) -> None:
        self.errors.append((status, message))


class _Conn:
    certified_node = None


class _Session:
    def __init__(self) -> None:
        self.grants: object = None
        self.presented_token: str | None = None
        self.slot, self.conn = 3, _Conn()
        self.replies: list[bytes] = []

    def reply(self, body: bytes) -> None:
        self.replies.append(body)


class _Leader:
    role = Role.LEADER
    lead_transferee = NONE


def _requests(source: Config) -> tuple[ClientRequests, _Intake, _Replies]:
    intake, replies = _Intake(), _Replies()
    unused = cast(Any, None)
    requests = ClientRequests(unused, cast(Any, _Leader()), cast(Any, source), cast(Any, intake), unused, cast(Any, replies),
                              unused, unused, unused, unused, unused, unused, lambda: None)
    return requests, intake, replies


def test_a_token_presented_before_this_node_knew_any_counts_once_the_tokens_arrive() -> None:
    """A follower can lag behind the cluster's first token: a session that authenticated while
    the node had none keeps its token and is judged by it once the tokens reach this node."""
    source = Config()
    requests, intake, replies = _requests(source)
    billing, stranger = new_token(), new_token()
    early, unknown = _Session(), _Session()
    requests.on_request(cast(Any, early), Request(Op.AUTH, 1, billing.encode()))
    requests.on_request(cast(Any, unknown), Request(Op.AUTH, 1, stranger.encode()))
    assert len(early.replies) == 1 and not replies.errors  # nothing to check against yet
    source.update({"ops": _entry(new_token(), "admin"), "billing": _entry(billing, "append:2", "read:2")})
    requests.on_request(cast(Any, early), Request(Op.CONFIG_GET, 2, b""))
    assert replies.errors == [(Status.PERMISSION_DENIED, "token 'billing' does not allow config_get (needs admin)")]
    assert isinstance(early.grants, Grants) and early.grants.name == "billing" and 3 in intake.limits
    requests.on_request(cast(Any, unknown), Request(Op.CONFIG_GET, 2, b""))
    assert replies.errors[1][0] == Status.UNAUTHENTICATED and unknown.grants is None


def test_a_change_to_a_token_holds_for_its_open_sessions_from_their_next_request() -> None:
    source = Config()
    requests, intake, replies = _requests(source)
    admin, billing = new_token(), new_token()
    source.update({"ops": _entry(admin, "admin"), "billing": _entry(billing, "append:2", "read:2")})
    session = _Session()
    requests.on_request(cast(Any, session), Request(Op.AUTH, 1, billing.encode()))
    assert intake.limits[3] == frozenset({2}) and not replies.errors
    source.update({"billing": _entry(billing, "append", "read:2")})  # widened: any queue
    assert requests.accepting_appends(cast(Any, session))  # what the client server asks per read
    assert intake.limits[3] is None
    source.update({"billing": _entry(billing, "read:2")})  # narrowed: no append at all
    requests.on_request(cast(Any, session), Request(Op.CONFIG_GET, 2, b""))
    assert replies.errors[-1][0] == Status.PERMISSION_DENIED
    assert isinstance(session.grants, Grants) and not session.grants.append
    source.update({"billing": _entry(billing, "append:1")})
    requests.on_request(cast(Any, session), Request(Op.CONFIG_GET, 3, b""))
    assert intake.limits[3] == frozenset({1})
    source.update({"ops": None, "billing": None})  # no tokens left: the cluster is open again
    requests.on_request(cast(Any, session), Request(Op.CONFIG_GET, 4, b""))
    assert len(replies.errors) == 2  # taken
    assert requests.accepting_appends(cast(Any, session))
    assert intake.limits[3] is None and session.grants is None
