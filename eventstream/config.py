"""Node configuration: one TOML file, every key also a command-line flag, validated at start.

Precedence, lowest first: built-in defaults, the --profile row of the tuning profiles (README.md), the
TOML file, explicit flags. Every value is checked here, with relationships between keys, so a
bad config stops the node with one clear line before it touches its data directory.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Recommended settings by use case (README.md, "Tuning profiles").
PROFILES: dict[str, dict[str, Any]] = {
    "financial": {"wal_sync": True, "batch_size": 1},
    "iot": {"wal_sync": False, "batch_size": 100},
    "logging": {"wal_sync": False, "batch_size": 1000},
}

REPLICATION_MODES = ("auto", "inprocess", "pool")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset
    narrows), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_replication_mode(cores: int | None = None) -> str:
    """What replication = "auto" becomes: "pool" when this process may run on more than one
    core (the workers then have a core to take the per-follower work to: encoding, CRC,
    encryption, sockets), "inprocess" on one core, where workers would only add context
    switches. Several nodes sharing a machine's cores is for whoever starts them to judge
    (`esc local` picks inprocess when it starts more nodes than there are cores)."""
    if cores is None:
        cores = usable_cores()
    return "pool" if cores > 1 else "inprocess"


def replication_in_effect(setting: str, cores: int | None = None) -> str:
    """The mode a node runs with the `replication` setting: "auto" decided here, once at start."""
    return default_replication_mode(cores) if setting == "auto" else setting


class ConfigError(ValueError):
    """A configuration key or value that the node refuses; the message names the key."""


def parse_address(key: str, value: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigError(f"{key}: {value!r} is not host:port with a port in 1..65535")
    return host.strip("[]"), int(port)


def parse_peers(value: str | dict[Any, Any]) -> dict[int, str]:
    """'1=127.0.0.1:7101,2=...' or a TOML table {1 = "..."} -> {1: '127.0.0.1:7101', ...}."""
    items: list[tuple[str, str]]
    if isinstance(value, dict):
        items = [(str(k), str(v)) for k, v in value.items()]
    else:
        items = []
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            node, sep, addr = part.partition("=")
            if not sep:
                raise ConfigError(f"peers: {part!r} is not id=host:port")
            items.append((node.strip(), addr.strip()))
    peers: dict[int, str] = {}
    for node, addr in items:
        if not (node.isascii() and node.isdigit()) or int(node) < 1:
            raise ConfigError(f"peers: node id {node!r} must be a positive integer")
        parse_address(f"peers[{node}]", addr)
        if int(node) in peers:
            raise ConfigError(f"peers: node id {node} appears twice")
        peers[int(node)] = addr
    return peers


@dataclass(slots=True)
class NodeConfig:
    id: int = 1
    listen: str = "127.0.0.1:7101"
    peers: dict[int, str] = field(default_factory=dict)
    data_dir: str = "./esc-data"
    http: str | None = None
    # Durability: true = an ack means a majority fdatasync'ed the event (the safe default).
    wal_sync: bool = True
    # Events per Raft entry the leader coalesces from concurrent clients, and its byte cap.
    batch_size: int = 1000
    batch_bytes_max: int = 4 * 1024 * 1024
    tick_ms: int = 10
    election_ticks: int = 50
    heartbeat_ticks: int = 5
    snapshot_threshold: int = 100_000
    segment_bytes: int = 64 * 1024 * 1024
    max_inflight: int = 64
    queue_count: int = 16
    dedup_window: float = 600.0  # seconds
    # How often the leader proposes DEDUP_EXPIRE; 0 disables.
    dedup_expire_interval: float = 5.0
    # Bytes of proposed-but-uncommitted entries the leader accepts before answering Overloaded.
    max_uncommitted_bytes: int = 256 * 1024 * 1024
    frame_bytes_max: int = 64 * 1024 * 1024
    log_level: str = "info"
    # Who moves a leader's messages to its followers: "inprocess" (the node's own thread),
    # "pool" (one worker process per follower, eventstream/replication/pool.py), or "auto":
    # pool when the node may use more than one core (replication_in_effect).
    replication: str = "auto"
    # This node's data dir was lost (a replaced disk) and it starts empty into a cluster that
    # has a log: it votes again only once caught up (RaftConfig.rejoining). No effect on a
    # data dir that holds a log.
    rejoin: bool = False
    # At start, if the log, hard state or newest snapshot fails its checks, move them aside
    # (DATA_DIR/damaged-N/) and start as with rejoin; without it the node stops and names the
    # damaged file (eventstream/node/damage.py).
    repair: bool = False
    # Client addresses (host:port,...) of members of a running cluster: this node learns the
    # membership from them and takes part once an operator adds it (`esc member add`); it
    # excludes --peers. Ignored once the data dir holds what a first join learned.
    join: str | None = None
    # Promote a learner to voter as soon as it is within max_promotion_lag entries (leader).
    auto_promote: bool = False
    # A learner further behind the leader than this many entries is not promoted.
    max_promotion_lag: int = 1000
    # Links are not encrypted: without this a node listens (peers, clients, HTTP) on loopback
    # addresses only, so nothing it says crosses a network in the clear by accident.
    insecure: bool = False
    # A directory from `esc certs init`: peer, client and HTTP links use TLS with the cluster's
    # CA, and peers must present a certificate naming their id (eventstream/tls.py).
    tls_dir: str | None = None
    # Networks (a.b.c.d/n or one address, comma-separated) whose hosts may read the HTTP
    # endpoint (/status, /metrics) without a token: a scraper's address. Unset: any host may;
    # others then need an admin token (Authorization: Bearer).
    http_allow: str | None = None

    @property
    def http_allow_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network] | None:
        if self.http_allow is None:
            return None
        return [ipaddress.ip_network(n.strip(), strict=False) for n in self.http_allow.split(",") if n.strip()]

    def validate(self) -> NodeConfig:
        if self.id < 1:
            raise ConfigError(f"id: must be a positive integer, got {self.id}")
        exposed_ok = self.insecure or self.tls_dir is not None
        _check_exposure("listen", self.listen, exposed_ok)
        if self.http is not None:
            _check_exposure("http", self.http, exposed_ok)
        if self.join is not None:
            if set(self.peers) - {self.id}:
                raise ConfigError("join: a joining node learns the members from the cluster; give --join or --peers, "
                                  "not both")
            if not self.join_addresses:
                raise ConfigError("join: give at least one host:port of a member")
            for address in self.join_addresses:
                parse_address("join", address)
        if not self.peers:
            self.peers = {self.id: self.listen}
        if self.id not in self.peers:
            raise ConfigError(f"peers: must include this node's own id {self.id}")
        if self.peers[self.id] != self.listen:
            raise ConfigError(
                f"peers[{self.id}] is {self.peers[self.id]!r} but listen is {self.listen!r}: they must match"
            )
        if len(set(self.peers.values())) != len(self.peers):
            raise ConfigError("peers: two nodes share one address")
        _positive("batch_size", self.batch_size, 1, 100_000)
        _positive("batch_bytes_max", self.batch_bytes_max, 1024, self.frame_bytes_max // 2)
        _positive("tick_ms", self.tick_ms, 1, 10_000)
        _positive("heartbeat_ticks", self.heartbeat_ticks, 1, 1_000_000)
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError(
                f"election_ticks ({self.election_ticks}) must be greater than heartbeat_ticks ({self.heartbeat_ticks})"
            )
        _positive("snapshot_threshold", self.snapshot_threshold, 1, 1 << 40)
        _positive("segment_bytes", self.segment_bytes, 64 * 1024, 1 << 34)
        _positive("max_inflight", self.max_inflight, 1, 1 << 16)
        _positive("queue_count", self.queue_count, 1, 1 << 16)
        _positive("max_promotion_lag", self.max_promotion_lag, 0, 1 << 40)
        if not 0 < self.dedup_window <= 7 * 24 * 3600:
            raise ConfigError(f"dedup_window: must be in (0, 604800] seconds, got {self.dedup_window}")
        if self.dedup_expire_interval < 0:
            raise ConfigError("dedup_expire_interval: must be >= 0 seconds")
        _positive("max_uncommitted_bytes", self.max_uncommitted_bytes, 1024, 1 << 40)
        _positive("frame_bytes_max", self.frame_bytes_max, 64 * 1024, 1 << 31)
        if self.replication not in REPLICATION_MODES:
            raise ConfigError(f"replication: must be one of {', '.join(REPLICATION_MODES)}, got {self.replication!r}")
        if self.http_allow is not None:
            try:
                if not self.http_allow_networks:
                    raise ValueError("no network")
            except ValueError:
                raise ConfigError(f"http_allow: {self.http_allow!r} is not a comma-separated list of networks "
                                  "(10.0.0.0/24) or addresses") from None
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: must be debug, info, warning or error, got {self.log_level!r}")
        return self

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def join_addresses(self) -> list[str]:
        return [a.strip() for a in (self.join or "").split(",") if a.strip()]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def _check_exposure(key: str, value: str, allowed: bool) -> None:
    host, _ = parse_address(key, value)
    if not allowed and not is_loopback(host):
        raise ConfigError(f"{key}: {host} is not a loopback address; without --tls-dir links are not encrypted, "
                          "so a node listens beyond loopback only with --insecure (insecure = true): peers' "
                          "messages, client requests and tokens then cross the network in the clear")


def _positive(key: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}: must be an integer in [{low}, {high}], got {value!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}


def _coerce(key: str, value: Any) -> Any:
    if key == "peers":
        return parse_peers(value)
    if value is None:
        return None
    kind = _FIELDS[key].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError(value)
        if kind == "int":
            # 3.7 is not silently 3, and inf (valid TOML) is no integer at all.
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(value)
            return number
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: {value!r} is not a valid {kind}") from None
    return str(value)


def load_config(
    path: str | Path | None = None, profile: str | None = None, overrides: dict[str, Any] | None = None
) -> NodeConfig:
    """Build a validated config from defaults, a profile, a TOML file and flag overrides."""
    values: dict[str, Any] = {}
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"profile: {profile!r} is not one of {', '.join(PROFILES)}")
        values.update(PROFILES[profile])
    if path is not None:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for key, value in table.items():
            key = key.replace("-", "_")
            if key == "profile":
                if value not in PROFILES:
                    raise ConfigError(f"profile: {value!r} is not one of {', '.join(PROFILES)}")
                values = {**PROFILES[value], **values}
                continue
            values[key] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key.replace("-", "_")] = value
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; known keys: {', '.join(sorted(_FIELDS))}")
    config = NodeConfig(**{k: _coerce(k, v) for k, v in values.items()})
    return config.validate()
