"""Replicated runtime configuration of the state machine (docs/state-machine.md, "Config").

Every key is checked on its own (no rule relates two keys), so an update the leader validated
before proposing is still valid when it is applied, whatever other update committed in between.
The leader calls `validate_config` before it proposes; apply validates again and treats a
failure as corruption or a version mismatch, because a valid leader never writes one.

Keys (units last, docs/conventions.md §14):
  queue_count            queues that hash-routed events spread over; a change affects only
                         events applied after it, and queues past a lowered count stay readable.
  dedup_window_ms        how long the LEADER keeps ids callers chose before proposing
                         DEDUP_EXPIRE; apply never reads it as a clock, the cutoff travels in
                         the command.
  dedup_generated_window_ms  the same for ids the client library generated (the caller gave
                         none). Only that library's retry loop can send such an id again, and it
                         stops retrying GENERATED_ID_RETRY_S (30 s) after the first attempt, so
                         the floor of 60 s keeps every retry it makes covered.
  dedup_ids_max          cap on remembered ids (memory bound, about 50 bytes per id).
  queue_segment_bytes    queue segment roll size; replicated because retention drops whole
                         segments, so replicas must cut segments at the same offsets.
  retention_bytes_max    default per-queue byte cap (0 = none), trimmed in whole sealed segments.
  retention_age_ms_max   default per-queue age cap (0 = none), judged against the newest event
                         timestamp in that queue, never a clock.
  queue_retention        per-queue overrides: {"<queue>": {"bytes_max": int, "age_ms_max": int}}.
  batch_size             events per Raft entry the leader's batcher aims for.
  snapshot_threshold     applied entries between snapshots.
  tokens                 client tokens by name: {"<name>": {"sha256": hex digest of the token,
                         "allow": ["append" or "append:<queue>", "read" or "read:<queue>", "admin"]}}; a name set
                         to null is revoked. Absent until the first token is created; while
                         absent or empty, clients need no token (docs/operations.md, "Tokens").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

QUEUE_COUNT_MAX = 65536
QUEUE_SEGMENT_BYTES_MIN = 4096
QUEUE_SEGMENT_BYTES_MAX = 1 << 30
DEDUP_IDS_MAX = 1 << 30


class ConfigError(ValueError):
    """A configuration value was refused; the message names the key and the allowed range."""


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    default: int
    meaning: str


INT_KEYS: dict[str, IntRange] = {
    "queue_count": IntRange(1, QUEUE_COUNT_MAX, 16, "number of queues"),
    "dedup_window_ms": IntRange(1_000, 30 * 86_400_000, 3_600_000, "dedup window in ms"),
    "dedup_generated_window_ms": IntRange(
        60_000, 30 * 86_400_000, 60_000, "dedup window of library-generated ids in ms"
    ),
    "dedup_ids_max": IntRange(1_000, DEDUP_IDS_MAX, 50_000_000, "remembered ids"),
    "queue_segment_bytes": IntRange(
        QUEUE_SEGMENT_BYTES_MIN, QUEUE_SEGMENT_BYTES_MAX, 64 << 20, "queue segment size in bytes"
    ),
    "retention_bytes_max": IntRange(0, 1 << 50, 0, "bytes kept per queue, 0 = no cap"),
    "retention_age_ms_max": IntRange(0, 100 * 365 * 86_400_000, 0, "age kept in ms, 0 = no cap"),
    "batch_size": IntRange(1, 100_000, 1000, "events per batch"),
    "snapshot_threshold": IntRange(1, 1 << 40, 100_000, "entries between snapshots"),
}
RETENTION_FIELDS = {"bytes_max": "retention_bytes_max", "age_ms_max": "retention_age_ms_max"}
TOKEN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
TOKEN_PERMISSIONS = ("append", "read", "admin")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def default_config() -> dict[str, Any]:
    config: dict[str, Any] = {key: spec.default for key, spec in INT_KEYS.items()}
    config["queue_retention"] = {}
    return config


def _check_int(key: str, value: Any, spec: IntRange) -> int:
    # bool is an int subclass; `true` for a queue count is a mistake, not a 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer ({spec.meaning}), got {value!r}")
    if not spec.low <= value <= spec.high:
        raise ConfigError(
            f"{key}={value} is out of range: {spec.meaning} must be in [{spec.low}, {spec.high}]"
        )
    return value


def _check_queue_retention(value: Any) -> dict[str, dict[str, int]]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"queue_retention must be a mapping of queue -> limits, got {value!r}")
    checked: dict[str, dict[str, int]] = {}
    for queue_text, limits in value.items():
        queue = str(queue_text)
        if not (queue.isascii() and queue.isdigit()) or int(queue) >= QUEUE_COUNT_MAX:
            raise ConfigError(
                f"queue_retention key {queue_text!r} must be a queue number in "
                f"[0, {QUEUE_COUNT_MAX - 1}]"
            )
        if not isinstance(limits, Mapping) or not limits:
            raise ConfigError(
                f"queue_retention[{queue}] must be a non-empty mapping with "
                f"{sorted(RETENTION_FIELDS)}, got {limits!r}"
            )
        checked_limits: dict[str, int] = {}
        for field, value_field in limits.items():
            if field not in RETENTION_FIELDS:
                raise ConfigError(
                    f"queue_retention[{queue}] has unknown field {field!r}; "
                    f"allowed: {sorted(RETENTION_FIELDS)}"
                )
            spec = INT_KEYS[RETENTION_FIELDS[field]]
            checked_limits[field] = _check_int(
                f"queue_retention[{queue}].{field}", value_field, spec
            )
        checked[str(int(queue))] = checked_limits
    return checked


def _check_permission(name: str, permission: Any) -> str:
    if isinstance(permission, str):
        if permission in TOKEN_PERMISSIONS:
            return permission
        kind, _, queue = permission.partition(":")
        if kind in ("read", "append") and (queue.isascii() and queue.isdigit()) and int(queue) < QUEUE_COUNT_MAX:
            return f"{kind}:{int(queue)}"
    raise ConfigError(f"tokens[{name}].allow: {permission!r} is not one of append, append:<queue>, read, "
                      "read:<queue>, admin")


def _check_tokens(value: Any) -> dict[str, dict[str, Any] | None]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"tokens must be a mapping of name -> token, got {value!r}")
    checked: dict[str, dict[str, Any] | None] = {}
    for name, token in value.items():
        if not isinstance(name, str) or not TOKEN_NAME.fullmatch(name):
            raise ConfigError(f"tokens: name {name!r} must be 1-64 of letters, digits, '_', '.', '-'")
        if token is None:
            checked[name] = None  # revoked
            continue
        if not isinstance(token, Mapping) or set(token) != {"sha256", "allow"}:
            raise ConfigError(f"tokens[{name}] must be {{\"sha256\": ..., \"allow\": [...]}} or null")
        digest, allow = token["sha256"], token["allow"]
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise ConfigError(f"tokens[{name}].sha256 must be 64 lowercase hex digits")
        if not isinstance(allow, list) or not allow:
            raise ConfigError(f"tokens[{name}].allow must be a non-empty list of permissions")
        checked[name] = {"sha256": digest, "allow": sorted({_check_permission(name, p) for p in allow})}
    return checked


def validate_config(update: Mapping[str, Any]) -> dict[str, Any]:
    """Check a proposed update; returns it normalised or raises ConfigError naming the key.

    The leader calls this before proposing CONFIG_UPDATE, so an invalid value never reaches the
    log. queue_retention entries replace that queue's overrides as a whole.
    """
    if not isinstance(update, Mapping) or not update:
        raise ConfigError("a config update must be a non-empty mapping of key -> value")
    checked: dict[str, Any] = {}
    for key, value in update.items():
        if key in INT_KEYS:
            checked[key] = _check_int(key, value, INT_KEYS[key])
        elif key == "queue_retention":
            checked[key] = _check_queue_retention(value)
        elif key == "tokens":
            checked[key] = _check_tokens(value)
        else:
            allowed = sorted([*INT_KEYS, "queue_retention", "tokens"])
            raise ConfigError(f"unknown config key {key!r}; allowed keys: {allowed}")
    return checked


def merge_config(config: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration after applying an already validated update."""
    merged = dict(config)
    for key, value in update.items():
        if key == "queue_retention":
            overrides = dict(merged["queue_retention"])
            overrides.update(value)
            merged[key] = overrides
        elif key == "tokens":
            tokens = dict(merged.get("tokens", {}))
            for name, token in value.items():
                if token is None:
                    tokens.pop(name, None)
                else:
                    tokens[name] = token
            merged[key] = tokens
        else:
            merged[key] = value
    return merged


def retention_limits(config: Mapping[str, Any], queue: int) -> tuple[int, int]:
    """(bytes_max, age_ms_max) in force for one queue; 0 means no cap."""
    override = config["queue_retention"].get(str(queue), {})
    return (
        override.get("bytes_max", config["retention_bytes_max"]),
        override.get("age_ms_max", config["retention_age_ms_max"]),
    )


def canonical_json(value: Any) -> bytes:
    """One byte string per value, so replicas hash and compare configuration identically."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
