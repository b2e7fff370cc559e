"""Client tokens and what they allow (docs/operations.md, "Tokens").

A token is a random secret the operator holds; the replicated config keeps only its SHA-256
under a name, with its permissions (eventstream/state/config.py, key `tokens`):

    append          APPEND to any queue;  append:<q>  APPEND to queue q only (every event of a
                    request must go to an allowed queue: its explicit one, or where its key routes)
    read            READ any queue;  read:<q>  READ queue q only
    admin           config (get and update, tokens included), snapshots, membership changes,
                    the state digest

A connection presents its token once, with AUTH, after its hello. Until the first token is
created the cluster takes requests without one; from then on every request but AUTH needs a
token that is still in the config (a revoked one stops working on open connections too, and a
change to a token's permissions holds for its open connections from their next request).

A connection over TLS that presented a node certificate of the cluster's CA (a node joining,
eventstream/node/join.py) holds no token and may make the requests a node needs before it is a
member: MEMBERS and STATUS (without the digest).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventstream.transport.client_protocol import Op, Status

TOKEN_PREFIX = "esc_"
# Requests only an admin token may make (the state digest, a STATUS option, is checked apart).
ADMIN_OPS = frozenset({Op.CONFIG_UPDATE, Op.CONFIG_GET, Op.SNAPSHOT, Op.MEMBER_CHANGE})
# What a node's certificate allows without a token (module doc).
NODE_CERTIFICATE_OPS = frozenset({Op.MEMBERS, Op.STATUS})


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Grants:
    """What one token allows; `digest` ties it to the config entry it came from."""

    name: str
    digest: str
    append: bool  # to any queue
    append_queues: frozenset[int]
    read_all: bool
    read_queues: frozenset[int]
    admin: bool
    # The config entry's own list, compared with the entry on each request to see a change
    # (a list compare of a few strings, no copy: this runs for every read of a session).
    allow: Sequence[str] = ()

    @classmethod
    def of(cls, name: str, digest: str, allow: list[str]) -> Grants:
        reads = frozenset(int(p.partition(":")[2]) for p in allow if p.startswith("read:"))
        appends = frozenset(int(p.partition(":")[2]) for p in allow if p.startswith("append:"))
        return cls(name, digest, "append" in allow, appends, "read" in allow, reads, "admin" in allow, allow)

    @property
    def append_limit(self) -> frozenset[int] | None:
        """The only queues this token may append to; None: any."""
        return None if self.append else self.append_queues

    def may_read(self, queue: int) -> bool:
        return self.read_all or queue in self.read_queues


class ConfigSource(Protocol):
    config: dict[str, Any]  # the replicated config; replaced as a whole by each update


class Authority:
    """Checks sessions' tokens against the replicated config (`tokens`)."""

    def __init__(self, source: ConfigSource) -> None:
        self._source = source

    @property
    def enabled(self) -> bool:
        return bool(self._source.config.get("tokens"))

    def authenticate(self, token: str) -> Grants | None:
        digest = token_digest(token)
        for name, entry in self._source.config.get("tokens", {}).items():
            if hmac.compare_digest(entry["sha256"], digest):
                return Grants.of(name, digest, entry["allow"])
        return None

    def current(self, grants: Grants) -> Grants:
        """`grants` as its token's config entry stands now: the same object while the entry's
        permissions are unchanged (or it was revoked or replaced: valid() says so)."""
        entry = self._source.config.get("tokens", {}).get(grants.name)
        if entry is None or entry["sha256"] != grants.digest or entry["allow"] == grants.allow:
            return grants
        return Grants.of(grants.name, grants.digest, entry["allow"])

    def valid(self, grants: Grants | None) -> bool:
        """Whether `grants` still stand: its token has not been revoked or replaced."""
        if grants is None:
            return False
        entry = self._source.config.get("tokens", {}).get(grants.name)
        return entry is not None and entry["sha256"] == grants.digest

    def may_append(self, grants: Grants | None) -> bool:
        return not self.enabled or (self.valid(grants) and grants is not None
                                    and (grants.append or bool(grants.append_queues)))

    def refusal(self, grants: Grants | None, op: Op, queue: int | None = None,
                digest_asked: bool = False, node_certificate: bool = False) -> tuple[Status, str] | None:
        """Why a session holding `grants` may not make this request; None when it may."""
        if op == Op.AUTH or not self.enabled:
            return None
        if grants is None and node_certificate and op in NODE_CERTIFICATE_OPS and not digest_asked:
            return None
        if grants is None:
            return Status.UNAUTHENTICATED, "this cluster requires a token: present one with AUTH (--token, ESC_TOKEN)"
        if not self.valid(grants):
            return Status.UNAUTHENTICATED, f"token {grants.name!r} was revoked"
        if op == Op.APPEND and not (grants.append or grants.append_queues):
            return Status.PERMISSION_DENIED, f"token {grants.name!r} does not allow append"
        if op == Op.READ and queue is not None and not grants.may_read(queue):
            return Status.PERMISSION_DENIED, f"token {grants.name!r} does not allow reading queue {queue}"
        if (op in ADMIN_OPS or digest_asked) and not grants.admin:
            return Status.PERMISSION_DENIED, f"token {grants.name!r} does not allow {op.name.lower()} (needs admin)"
        return None


def describe(grants: Grants) -> dict[str, Any]:
    allow = [p for p, on in (("append", grants.append), ("read", grants.read_all), ("admin", grants.admin)) if on]
    return {"name": grants.name, "allow": allow + [f"append:{q}" for q in sorted(grants.append_queues)]
            + [f"read:{q}" for q in sorted(grants.read_queues)]}
