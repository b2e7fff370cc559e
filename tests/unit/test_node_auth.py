"""Tokens and permissions (eventstream/node/auth.py) over the replicated config's `tokens`."""

from __future__ import annotations

from typing import Any

import pytest

from eventstream.node.auth import Authority, new_token, token_digest
from eventstream.state.config import ConfigError, default_config, merge_config, validate_config
from eventstream.transport.client_protocol import Op, Status


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
