"""`esc`: run a node or a local cluster, and talk to a cluster from the shell.

Every operator-facing failure (bad flag, unreachable cluster, refused value, damaged file) is
one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from eventstream import __version__
from eventstream.config import PROFILES, ConfigError, load_config
from eventstream.node_log import configure_node_log

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2
EXIT_FAILED = 1


def _one_line_errors(fn: F) -> F:
    """Turn the errors an operator can cause into one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from eventstream.errors import EscError
        from eventstream.state import StateError
        from eventstream.storage import StorageError

        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"esc: config error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except EscError as exc:
            click.echo(f"esc: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except (StorageError, StateError) as exc:
            click.echo(f"esc: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except OSError as exc:
            click.echo(f"esc: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="esc")
def main() -> None:
    """EventStreamCore: Raft-replicated event ingestion."""


# ------------------------------------------------------------------------------- esc node
def _node_options(fn: F) -> F:
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file with any of the keys below"),
        click.option("--profile", type=click.Choice(sorted(PROFILES)), help="tuning profile: financial, iot, logging (README.md)"),
        click.option("--id", "node_id", type=int, help="this node's id (a key of --peers)"),
        click.option("--listen", help="host:port for peers and clients"),
        click.option("--peers", help="every node as id=host:port, comma-separated, this one included"),
        click.option("--data-dir", help="directory for the log, hard state, snapshots and queues"),
        click.option("--http", help="host:port for GET /status and /metrics"),
        click.option("--wal-sync/--no-wal-sync", default=None, help="fdatasync before acknowledging (default: on)"),
        click.option("--batch-size", type=int, help="events the leader coalesces into one entry"),
        click.option("--tick-ms", type=int, help="Raft tick interval"),
        click.option("--election-ticks", type=int),
        click.option("--heartbeat-ticks", type=int),
        click.option("--snapshot-threshold", type=int, help="applied entries between snapshots"),
        click.option("--segment-bytes", type=int, help="Raft log segment size"),
        click.option("--max-inflight", type=int, help="AppendEntries in flight per follower"),
        click.option("--queue-count", type=int, help="queues of a new cluster (then: esc config set)"),
        click.option("--dedup-window", type=float, help="seconds an id the caller chose is remembered (new cluster; ids the client library generates: dedup_generated_window_ms)"),
        click.option("--dedup-expire-interval", type=float, help="seconds between the leader's DEDUP_EXPIRE proposals"),
        click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"])),
        click.option("--replication", type=click.Choice(["auto", "inprocess", "pool"]),
                     help="move a leader's messages on its own thread, or in one process per follower; auto (the default): pool when the node may use 2+ cores"),
        click.option("--rejoin", is_flag=True, default=None,
                     help="this node lost its data dir and starts empty into a running cluster: no vote until it has caught up"),
        click.option("--repair", is_flag=True, default=None,
                     help="if the log, hard state or snapshot is damaged, move them aside and catch up as with --rejoin"),
        click.option("--join", help="host:port,... of members of a running cluster: learn its membership "
                     "and take part once added (esc member add); instead of --peers"),
        click.option("--auto-promote", is_flag=True, default=None,
                     help="as leader, promote each learner to voter once caught up"),
        click.option("--max-promotion-lag", type=int, help="entries a learner may lag the leader and be promoted"),
        click.option("--tls-dir", type=click.Path(file_okay=False),
                     help="certificates from `esc certs init`: TLS on peer, client and HTTP links"),
        click.option("--http-allow", metavar="NETS",
                     help="networks (10.0.0.0/24,...) that may read /status and /metrics without a token"),
        click.option("--insecure", is_flag=True, default=None,
                     help="listen beyond loopback without encryption (everything crosses the network in the clear)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    names = {"node_id": "id"}
    return {names.get(k, k): v for k, v in kwargs.items() if v is not None}


@main.command()
@_node_options
@_one_line_errors
def node(config_path: str | None, profile: str | None, **kwargs: Any) -> None:
    """Run one node in the foreground until SIGTERM or Ctrl-C."""
    config = load_config(config_path, profile, _overrides(kwargs))
    configure_node_log(config.log_level, config.id)
    from eventstream.node import run_node

    try:
        import uvloop

        runner: Callable[..., int] = uvloop.run
    except ImportError:
        runner = asyncio.run
    sys.exit(runner(run_node(config)))


# ------------------------------------------------------------------------------- esc local
@main.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default="./esc-local", show_default=True)
@click.option("--port", type=click.IntRange(1, 65000), default=7101, show_default=True, help="node k listens on port+k-1")
@click.option("--http-port", type=click.IntRange(1, 65000), default=8101, show_default=True)
@click.option("--wal-sync/--no-wal-sync", default=None)
@click.option("--profile", type=click.Choice(sorted(PROFILES)))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--secure", is_flag=True, help="TLS on every link (certificates in DATA_DIR/tls) and an admin token")
@_one_line_errors
def local(nodes: int, data_dir: str, port: int, http_port: int, wal_sync: bool | None, profile: str | None,
          log_level: str, secure: bool) -> None:
    """Run a cluster of N node processes on loopback in the foreground (Ctrl-C stops all).

    Restarting on the same --data-dir resumes the same cluster."""
    from eventstream.local_cluster import LocalCluster

    options: dict[str, Any] = {"log_level": log_level}
    if wal_sync is not None:
        options["wal_sync"] = wal_sync
    if profile:
        options["profile"] = profile
    tls_dir = Path(data_dir) / "tls"
    if secure:
        from eventstream.tls import CA_FILE, init_certs

        if not (tls_dir / CA_FILE).exists():
            init_certs(tls_dir, nodes, ["127.0.0.1"])
        options["tls_dir"] = str(tls_dir)
    cluster = LocalCluster(Path(data_dir), nodes, port=port, http_port=http_port, **options)
    stop = {"requested": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster.start()
    click.echo(f"esc local: {nodes} nodes, data in {cluster.root}/node*, logs in {cluster.root}/node*.log")
    for k, n in cluster.nodes.items():
        pid = n.proc.pid if n.proc else "?"
        click.echo(f"  node {k}: client/peer {n.address}   {'https' if secure else 'http'}://{n.http}/status   pid {pid}")
    click.echo(f"  --cluster {','.join(cluster.addresses)}")
    if secure:
        click.echo(f"  TLS: export ESC_CA={tls_dir / 'ca.pem'}")
        click.echo(f"  token: {_local_admin_token(cluster, Path(data_dir))}")
    exited: set[int] = set()
    while not stop["requested"] and len(exited) < nodes:
        time.sleep(0.2)
        for k, n in cluster.nodes.items():
            if k not in exited and not n.alive:
                exited.add(k)
                code = n.proc.returncode if n.proc else None
                click.echo(f"esc local: node {k} exited with code {code} (see {n.log_path})", err=True)
    cluster.stop()
    click.echo("esc local: all nodes stopped")


def _local_admin_token(cluster: Any, data_dir: Path) -> str:
    """An admin token for a secured local cluster: made once (kept in DATA_DIR/tls/admin-token),
    then the same on every restart."""
    kept = data_dir / "tls" / "admin-token"
    if kept.exists():
        return f"export ESC_TOKEN={kept.read_text().strip()}"
    secret = cluster.create_token("local-admin")
    fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return f"export ESC_TOKEN={secret}   (also in {kept})"


# ------------------------------------------------------------------------------- clients
def _cluster_option(fn: F) -> F:
    fn = click.option(
        "--ca", envvar="ESC_CA", expose_value=False, metavar="CA_PEM", type=click.Path(dir_okay=False),
        callback=lambda ctx, param, value: ctx.meta.__setitem__("esc_ca", value),
        help="the cluster CA's ca.pem: talk TLS and check the nodes' certificates (or ESC_CA)",
    )(fn)
    fn = click.option(
        "--token", envvar="ESC_TOKEN", expose_value=False, metavar="TOKEN",
        callback=lambda ctx, param, value: ctx.meta.__setitem__("esc_token", value),
        help="the client token, once the cluster has tokens (or ESC_TOKEN)",
    )(fn)
    return click.option(
        "--cluster", default=lambda: os.environ.get("ESC_CLUSTER", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"),
        show_default="ESC_CLUSTER or 127.0.0.1:7101-7103", help="client addresses host:port,...",
    )(click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds, retries included")(fn))


def _client(cluster: str, timeout: float) -> Any:
    from eventstream.client import Client

    meta = click.get_current_context().meta
    return Client(cluster, timeout_s=timeout, attempt_timeout_s=min(3.0, timeout), token=meta.get("esc_token") or None,
                  tls_ca=meta.get("esc_ca") or None)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@main.command()
@_cluster_option
@click.option("--all", "all_nodes", is_flag=True, help="ask every address, not just one")
@click.option("--digest", is_flag=True,
              help="add the state digest (reads all of a node's retained data; for checking nodes agree)")
@_one_line_errors
def status(cluster: str, timeout: float, all_nodes: bool, digest: bool) -> None:
    """Show a node's (or every node's) view of the cluster."""
    with _client(cluster, timeout) as c:
        if all_nodes:
            out = {}
            for address in c._async.addresses:
                try:
                    out[address] = c.status(address, digest)
                except Exception as exc:  # one node down must not hide the others
                    out[address] = {"error": str(exc)}
            _echo_json(out)
        else:
            _echo_json(c.status(digest=digest))


@main.command()
@_cluster_option
@click.argument("payload")
@click.option("--key", help="routing key (queue = mmh3(key) mod queue_count)")
@click.option("--id", "event_id", help="event id for exactly-once (default: a random one)")
@click.option("--queue", type=click.IntRange(0, 2**31 - 1), help="explicit queue instead of the key's")
@_one_line_errors
def append(cluster: str, timeout: float, payload: str, key: str | None, event_id: str | None, queue: int | None) -> None:
    """Append one event (PAYLOAD; '-' reads it from stdin)."""
    data = sys.stdin.buffer.read() if payload == "-" else payload.encode()
    with _client(cluster, timeout) as c:
        r = c.append(data, key=key, event_id=event_id, queue=queue)
    _echo_json({"queue": r.queue, "offset": r.offset, "index": r.index, "duplicate": r.duplicate,
                "event_id": r.event_id.hex()})


def _event_json(e: Any) -> dict[str, Any]:
    return {
        "offset": e.offset,
        "event_id": None if e.event_id is None else e.event_id.decode(errors="backslashreplace"),
        "key": None if e.key is None else e.key.decode(errors="backslashreplace"),
        "timestamp_us": e.timestamp,
        "payload": e.payload.decode(errors="backslashreplace"),
    }


@main.command()
@_cluster_option
@click.option("--queue", type=click.IntRange(0, 2**31 - 1), required=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--stale", is_flag=True, help="read any node's local state (not linearizable)")
@_one_line_errors
def read(cluster: str, timeout: float, queue: int, offset: int, limit: int, stale: bool) -> None:
    """Read events of one queue from an offset, one JSON object per line."""
    with _client(cluster, timeout) as c:
        events = c.read(queue, offset, limit, consistency="stale" if stale else "linearizable")
    for e in events:
        click.echo(json.dumps(_event_json(e)))


@main.command()
@_cluster_option
@click.option("--queue", type=click.IntRange(0, 2**31 - 1), required=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="keep waiting for new events")
@click.option("--poll", type=float, default=0.2, show_default=True, help="seconds between polls when caught up")
@_one_line_errors
def tail(cluster: str, timeout: float, queue: int, offset: int, follow: bool, poll: float) -> None:
    """Print a queue's events from an offset; with -f, follow it until Ctrl-C."""
    with _client(cluster, timeout) as c:
        try:
            while True:
                events, offset = c.read_page(queue, offset, 1000)
                for e in events:
                    click.echo(json.dumps(_event_json(e)))
                if not events:
                    if not follow:
                        return
                    time.sleep(poll)
        except KeyboardInterrupt:
            return


@main.group()
def config() -> None:
    """Read or change the replicated runtime configuration."""


@config.command("get")
@_cluster_option
@_one_line_errors
def config_get(cluster: str, timeout: float) -> None:
    with _client(cluster, timeout) as c:
        _echo_json(c.config_get())


@config.command("set")
@_cluster_option
@click.argument("assignments", nargs=-1, required=True)
@_one_line_errors
def config_set(cluster: str, timeout: float, assignments: tuple[str, ...]) -> None:
    """Set KEY=VALUE ... (VALUE is JSON: 32, "x", {"0": {"bytes_max": 1000}})."""
    from eventstream.errors import InvalidArgument

    changes: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{item!r} is not KEY=VALUE")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    with _client(cluster, timeout) as c:
        _echo_json(c.config_update(changes))


@main.command()
@_cluster_option
@_one_line_errors
def snapshot(cluster: str, timeout: float) -> None:
    """Ask the leader to take a snapshot now."""
    with _client(cluster, timeout) as c:
        _echo_json(c.snapshot())


@main.group()
def member() -> None:
    """Show and change the cluster's membership, one node at a time (README.md, "Membership")."""


def _parse_member(spec: str) -> tuple[int, str]:
    from eventstream.errors import InvalidArgument

    node, sep, address = spec.partition("=")
    if not sep or not (node.strip().isascii() and node.strip().isdigit()) or int(node) < 1 or not address.strip():
        raise InvalidArgument(f"{spec!r} is not ID=HOST:PORT (the new node's id and its --listen address)")
    return int(node), address.strip()


@member.command("list")
@_cluster_option
@click.option("--json", "as_json", is_flag=True, help="the whole answer as JSON")
@_one_line_errors
def member_list(cluster: str, timeout: float, as_json: bool) -> None:
    """Each member's id, role and address; from the leader, how far each lags."""
    with _client(cluster, timeout) as c:
        view = c.members()
    if as_json:
        _echo_json(view)
        return
    leader = view.get("leader")
    for node, row in sorted(view["members"].items(), key=lambda kv: int(kv[0])):
        lag = f"  lag {row['lag']}" if "lag" in row else ""
        mark = "  leader" if int(node) == leader else ""
        click.echo(f"{node:>4}  {row['role']:<8} {row['address'] or '?'}{mark}{lag}")
    if view.get("pending"):
        click.echo(f"a change (entry {view['index']}) is not committed yet")


@member.command("add")
@_cluster_option
@click.argument("spec", metavar="ID=HOST:PORT")
@click.option("--learner/--voter", default=True, show_default=True,
              help="join as a non-voting learner (promote it once caught up), or as a voter at once")
@click.option("--force", is_flag=True, help="make the change even if too few voters would be live after it")
@_one_line_errors
def member_add(cluster: str, timeout: float, spec: str, learner: bool, force: bool) -> None:
    """Add a node (started with --join, or to be started so) at its --listen address."""
    node, address = _parse_member(spec)
    with _client(cluster, timeout) as c:
        view = c.add_member(node, address, learner=learner, force=force)
    click.echo(f"node {node} added as {view['members'][str(node)]['role']} at {address}")


@member.command("promote")
@_cluster_option
@click.argument("node", type=click.IntRange(1))
@click.option("--force", is_flag=True, help="make the change even if too few voters would be live after it")
@_one_line_errors
def member_promote(cluster: str, timeout: float, node: int, force: bool) -> None:
    """Make a learner a voter; refused while it lags the leader."""
    with _client(cluster, timeout) as c:
        c.promote_member(node, force=force)
    click.echo(f"node {node} is a voter")


@member.command("remove")
@_cluster_option
@click.argument("node", type=click.IntRange(1))
@click.option("--force", is_flag=True, help="make the change even if too few voters would be live after it")
@_one_line_errors
def member_remove(cluster: str, timeout: float, node: int, force: bool) -> None:
    """Remove a voter or learner (the leader too: it hands leadership over once removed)."""
    with _client(cluster, timeout) as c:
        c.remove_member(node, force=force)
    click.echo(f"node {node} removed; stop its process")


@main.group()
def certs() -> None:
    """Certificates for TLS between nodes and clients (docs/operations.md, "TLS")."""


@certs.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--nodes", type=click.IntRange(1, 1000), required=True, help="node certificates for ids 1..N")
@click.option("--host", "hosts", multiple=True, help="an address or name the nodes are reached at (repeatable); "
              "clients do not check it, it is recorded for other tools")
@_one_line_errors
def certs_init(directory: str, nodes: int, hosts: tuple[str, ...]) -> None:
    """Write a cluster CA and one certificate per node into DIRECTORY."""
    from eventstream.tls import init_certs

    for path in init_certs(directory, nodes, list(hosts)):
        click.echo(path)
    click.echo(f"keep {Path(directory) / 'ca.key'} offline once every node has its certificate; give clients "
               f"{Path(directory) / 'ca.pem'} (--ca)", err=True)


@certs.command("issue")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("--node", "node_id", type=click.IntRange(1, 2**63 - 1), required=True,
              help="the node id the certificate names")
@click.option("--host", "hosts", multiple=True, help="an address or name the node is reached at (repeatable)")
@_one_line_errors
def certs_issue(directory: str, node_id: int, hosts: tuple[str, ...]) -> None:
    """A new certificate for one node from the CA in DIRECTORY (needs its ca.key): to rotate a
    node's certificate, or for a node joining with a new id. Restart the node to use it."""
    from eventstream.tls import issue_cert

    for path in issue_cert(directory, node_id, list(hosts)):
        click.echo(path)


@main.group()
def token() -> None:
    """Create, list and revoke client tokens (docs/operations.md, "Tokens")."""


@token.command("create")
@_cluster_option
@click.option("--name", required=True, help="what the token is for; 1-64 of letters, digits, '_', '.', '-'")
@click.option("--allow", required=True, metavar="PERMS",
              help="comma-separated: append, append:<queue>, read, read:<queue>, admin (the first token must "
                   "allow admin)")
@_one_line_errors
def token_create(cluster: str, timeout: float, name: str, allow: str) -> None:
    """Create a token and print it once: the cluster keeps only its SHA-256."""
    from eventstream.errors import InvalidArgument
    from eventstream.node.auth import new_token, token_digest

    permissions = [p.strip() for p in allow.split(",") if p.strip()]
    with _client(cluster, timeout) as c:
        existing = c.config_get().get("tokens", {})
        if name in existing:
            raise InvalidArgument(f"a token named {name!r} exists; revoke it first, or pick another name")
        secret = new_token()
        c.config_update({"tokens": {name: {"sha256": token_digest(secret), "allow": permissions}}})
    click.echo(secret)
    click.echo(f"token {name!r} allows {', '.join(permissions)}; it is shown only now", err=True)


@token.command("revoke")
@_cluster_option
@click.argument("name")
@_one_line_errors
def token_revoke(cluster: str, timeout: float, name: str) -> None:
    """Revoke a token: open connections that presented it are refused from their next request."""
    from eventstream.errors import InvalidArgument

    with _client(cluster, timeout) as c:
        if name not in c.config_get().get("tokens", {}):
            raise InvalidArgument(f"no token named {name!r}")
        c.config_update({"tokens": {name: None}})
    click.echo(f"token {name!r} revoked")


@token.command("list")
@_cluster_option
@_one_line_errors
def token_list(cluster: str, timeout: float) -> None:
    """Each token's name and permissions (never the token itself)."""
    with _client(cluster, timeout) as c:
        tokens = c.config_get().get("tokens", {})
    for name, entry in sorted(tokens.items()):
        click.echo(f"{name}  {','.join(entry['allow'])}")


@main.group()
def wal() -> None:
    """Inspect and check a node's Raft log and data dir offline."""


@wal.command("inspect")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--records", is_flag=True, help="list every record, not just the segments")
@_one_line_errors
def wal_inspect(directory: str, records: bool) -> None:
    """Segments, index ranges, terms and CRC status of a log directory (a node's data dir or
    its log/ folder)."""
    from eventstream.storage.inspect import inspect_log

    path = Path(directory)
    if (path / "log").is_dir():
        path = path / "log"
    report = inspect_log(str(path), list_records=records)
    for line in report.lines:
        click.echo(line)
    if not report.ok:
        sys.exit(EXIT_FAILED)


@wal.command("check")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@_one_line_errors
def wal_check(directory: str) -> None:
    """Check a node's data dir (log, hard state, newest snapshot) and say what to do about damage.
    Read-only; exit status 1 when something is damaged."""
    from eventstream.node.damage import REPAIR_ADVICE, check_data_dir

    path = Path(directory)
    if path.name == "log" and not (path / "log").is_dir():
        path = path.parent
    result = check_data_dir(path)
    for line in result.notes:
        click.echo(f"ok: {line}")
    for line in result.problems:
        click.echo(f"DAMAGED: {line}")
    if result.ok:
        click.echo(f"{path}: no damage found")
        return
    click.echo(f"What to do: {REPAIR_ADVICE.format(data_dir=path)}")
    sys.exit(EXIT_FAILED)


@main.command()
@click.option("--duration", type=click.FloatRange(5, 600), default=20.0, show_default=True, help="seconds of load")
@click.option("--clients", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--batch", type=click.IntRange(1, 1000), default=10, show_default=True, help="events per append")
@click.option("--keep", is_flag=True, help="keep the cluster's data and logs")
@_one_line_errors
def demo(duration: float, clients: int, batch: int, keep: bool) -> None:
    """Appends on a real 3-node cluster, with a leader crash midway, then checks every ack."""
    from eventstream.demo import run_demo

    sys.exit(run_demo(duration, clients, batch, keep))


if __name__ == "__main__":
    main()
