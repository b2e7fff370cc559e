"""`esc-bench`: load generator and benchmark driver.

    esc-bench --local 3 --batch-size 1000 --duration 10 --json run.json --plot run.png
    esc-bench --cluster 10.0.0.1:7101,10.0.0.2:7101,10.0.0.3:7101 --rate 50000
    esc-bench compare before.json after.json
    esc-bench storage

The parts live in esc_bench/: worker.py (client processes, open and closed loop),
latency.py (HdrHistogram), node_usage.py (psutil), run.py (one run), report.py (table, JSON,
compare), plot.py. Every mistake an operator can make ends in one line on stderr and a
non-zero exit: 2 for a bad parameter, 1 for a run that could not be carried out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import click

from esc_bench.storage_append import (
    AppendFigures,
    compare_with_plain_write,
    measure_append,
)
from eventstream.storage.codec import BATCH_BYTES_MAX, BATCH_EVENTS_MAX, EVENT_BYTES_MAX

_STORAGE_BYTES_MAX = 256 * 1024 * 1024

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CLIENTS_MAX = 256
CONCURRENCY_MAX = 10_000
KEYS_MAX = 10_000_000
LOCAL_NODES_MAX = 9
# Per-event framing in a batch, counted generously so a batch judged to fit really does.
EVENT_OVERHEAD_BYTES_BOUND = 64
LEADER_WAIT_S = 30.0


class ParamError(Exception):
    """A parameter the run cannot use; the message is the one line the operator sees."""


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"esc-bench: error: {message}", err=True)
    sys.exit(code)


@dataclass(frozen=True, slots=True)
class Target:
    cluster: str | None
    local: int | None
    wal_sync: bool | None
    replication: str | None
    secure: bool = False


def validate(target: Target, clients: int, concurrency: int, batch_size: int, payload_bytes: int,
             keys: int, read_ratio: float, duration: float | None, events: int | None,
             warmup: float, rate: float | None, time_limit: float, timeout: float,
             report_interval: float) -> None:
    """Raise ParamError naming the first parameter out of its range."""
    if (target.cluster is None) == (target.local is None):
        raise ParamError("give exactly one target: --cluster host:port,... or --local N (esc-bench -h for help)")
    if target.cluster is not None and (target.wal_sync is not None or target.replication is not None):
        raise ParamError("--wal-sync and --replication configure a --local cluster; "
                         "a running --cluster keeps its own settings")
    if target.local is not None and not 1 <= target.local <= LOCAL_NODES_MAX:
        raise ParamError(f"--local must be 1..{LOCAL_NODES_MAX} nodes, not {target.local}")
    checks: list[tuple[bool, str]] = [
        (1 <= clients <= CLIENTS_MAX, f"--clients must be 1..{CLIENTS_MAX}, not {clients}"),
        (1 <= concurrency <= CONCURRENCY_MAX, f"--concurrency must be 1..{CONCURRENCY_MAX}, not {concurrency}"),
        (1 <= batch_size <= BATCH_EVENTS_MAX, f"--batch-size must be 1..{BATCH_EVENTS_MAX}, not {batch_size}"),
        (0 <= payload_bytes <= EVENT_BYTES_MAX,
         f"--payload-bytes must be 0..{EVENT_BYTES_MAX}, not {payload_bytes}"),
        (1 <= keys <= KEYS_MAX, f"--keys must be 1..{KEYS_MAX}, not {keys}"),
        (0.0 <= read_ratio <= 1.0, f"--read-ratio must be between 0 and 1, not {read_ratio}"),
        (duration is None or events is None, "give --duration or --events, not both"),
        (duration is None or 0 < duration <= time_limit,
         f"--duration must be > 0 s and at most --time-limit ({time_limit:g} s), not {duration}"),
        (events is None or events >= 1, f"--events must be >= 1, not {events}"),
        (0 <= warmup <= time_limit, f"--warmup must be 0..{time_limit:g} s, not {warmup}"),
        (rate is None or rate > 0, f"--rate must be > 0 events/s, not {rate}"),
        (time_limit > 0, f"--time-limit must be > 0 s, not {time_limit}"),
        (timeout > 0, f"--timeout must be > 0 s, not {timeout}"),
        (0.1 <= report_interval <= 60, f"--report-interval must be 0.1..60 s, not {report_interval}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ParamError(message)
    batch_bytes = batch_size * (payload_bytes + EVENT_OVERHEAD_BYTES_BOUND)
    if batch_bytes > BATCH_BYTES_MAX:
        raise ParamError(f"--batch-size x --payload-bytes makes {batch_bytes:,} bytes per request, "
                         f"above the {BATCH_BYTES_MAX:,}-byte batch limit")
    if rate is not None and rate / batch_size / clients > 1e6:
        raise ParamError("--rate asks for more than 1,000,000 requests/s per client; raise --batch-size")


def validate_engine(engine: str, read_ratio: float, rate: float | None) -> None:
    """The native engine is a closed loop of appends; it refuses what it does not do rather
    than quietly measuring something else."""
    if engine != "native":
        return
    if read_ratio > 0:
        raise ParamError("--engine native sends appends only; --read-ratio needs --engine client")
    if rate is not None:
        raise ParamError("--engine native is a closed loop; --rate (open loop) needs --engine client")


class _OneLineErrors(click.Group):
    """Click's own parameter errors (a value that is not a number, an unknown option) as one
    line, like the errors this module raises, instead of usage text plus the error."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.UsageError as exc:
            _fail(exc.format_message(), EXIT_USAGE)
        except click.ClickException as exc:
            _fail(exc.format_message(), EXIT_FAILED)
        except click.Abort:
            _fail("interrupted", EXIT_INTERRUPTED)


@click.group(cls=_OneLineErrors, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--cluster", help="client addresses of a running cluster: host:port,host:port,...")
@click.option("--local", type=int, help="start a local cluster of N nodes in a temp dir for the run")
@click.option("--wal-sync/--no-wal-sync", default=None, help="--local only: fdatasync before acking (node default: on)")
@click.option("--replication", help="--local only: passed to each node as --replication "
              "(refused while `esc node` has no such option)")
@click.option("--clients", type=int, default=2, show_default=True, help="client processes")
@click.option("--concurrency", type=int, default=8, show_default=True,
              help="requests in flight per client process (--engine native: connections per process)")
@click.option("--batch-size", type=int, default=100, show_default=True, help="events per append request")
@click.option("--payload-bytes", type=int, default=100, show_default=True)
@click.option("--keys", type=int, default=1000, show_default=True, help="routing-key cardinality")
@click.option("--ids/--no-ids", default=True, show_default=True, help="give every event an id (dedup)")
@click.option("--read-ratio", type=float, default=0.0, show_default=True,
              help="share of requests that read back a queue (linearizable)")
@click.option("--duration", type=float, help="seconds to measure after warm-up (default 10)")
@click.option("--events", type=int, help="instead of --duration: send this many events after warm-up (whole batches)")
@click.option("--warmup", type=float, default=2.0, show_default=True, help="seconds before measuring")
@click.option("--rate", type=float, help="open loop: offered events/s over all clients (reads take their share)")
@click.option("--time-limit", type=float, default=300.0, show_default=True,
              help="bound of an --events run after warm-up, seconds")
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="seconds one request may take, retries included")
@click.option("--report-interval", type=float, default=1.0, show_default=True,
              help="seconds between progress lines (and timeline points)")
@click.option("--seed", type=int, default=1, show_default=True, help="keys and payload bytes")
@click.option("--engine", type=click.Choice(["client", "native"]), default="client", show_default=True,
              help="client: each --clients process is one AsyncClient keeping --concurrency requests "
              "in flight on one connection. native: each process runs a C epoll loop over "
              "--concurrency connections to the leader, each one client with one request at a time "
              "(send, wait for the answer, send the next), so --clients 2 --concurrency 32 "
              "--batch-size 1 is 64 single-event clients; closed loop, appends only "
              "(no --rate, no --read-ratio)")
@click.option("--ca", "tls_ca", envvar="ESC_CA", type=click.Path(dir_okay=False, exists=True),
              help="the cluster CA's ca.pem: connect over TLS (or ESC_CA)")
@click.option("--token", envvar="ESC_TOKEN", help="the client token of a cluster with tokens (or ESC_TOKEN)")
@click.option("--secure", is_flag=True,
              help="--local only: TLS on every link and a token on every connection, as `esc local --secure`")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="write every figure here")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="PNG of throughput over time and the latency distribution (needs matplotlib)")
@click.pass_context
def main(ctx: click.Context, cluster: str | None, local: int | None, wal_sync: bool | None,
         replication: str | None, clients: int, concurrency: int, batch_size: int,
         payload_bytes: int, keys: int, ids: bool, read_ratio: float, duration: float | None,
         events: int | None, warmup: float, rate: float | None, time_limit: float, timeout: float,
         report_interval: float, seed: int, engine: str, tls_ca: str | None, token: str | None, secure: bool,
         json_path: str | None, plot_path: str | None) -> None:
    """EventStreamCore load generator: drive a cluster and report throughput, latency and CPU.

    Subcommands: compare (two --json reports), storage (SegmentLog append benchmark)."""
    if ctx.invoked_subcommand is not None:
        if cluster is not None or local is not None:
            _fail(f"--cluster/--local run a load; they do not go with '{ctx.invoked_subcommand}'", EXIT_USAGE)
        return
    target = Target(cluster, local, wal_sync, replication, secure)
    if duration is None and events is None:
        duration = 10.0
    try:
        validate(target, clients, concurrency, batch_size, payload_bytes, keys, read_ratio, duration,
                 events, warmup, rate, time_limit, timeout, report_interval)
        validate_engine(engine, read_ratio, rate)
        if target.cluster is not None:
            _parse_cluster(target.cluster)
        if target.replication is not None:
            _check_node_has_replication_flag()
        if secure and local is None:
            raise ParamError("--secure starts a secured local cluster: it needs --local (with --cluster, give --ca and --token)")
        if secure and (tls_ca or token):
            raise ParamError("--secure makes its own CA and token; --ca and --token are for --cluster")
    except ParamError as exc:
        _fail(str(exc), EXIT_USAGE)
    if plot_path is not None:
        _require_matplotlib()

    from esc_bench.params import LoadParams
    from esc_bench.run import LoadError

    params = LoadParams(clients, concurrency, batch_size, payload_bytes, keys, ids, read_ratio,
                        duration, events, warmup, rate, time_limit, timeout, report_interval, seed,
                        engine, tls_ca, token)
    try:
        report = _run(target, params)
    except (LoadError, ParamError) as exc:
        _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        # The local cluster and the client processes are already stopped by then.
        _end_progress()
        _fail("interrupted; no report", EXIT_INTERRUPTED)
    from esc_bench.report import render_table

    click.echo(render_table(report))
    if json_path is not None:
        _write_json(report, json_path)
        click.echo(f"report written to {json_path}")
    if plot_path is not None:
        from esc_bench.plot import write_plot

        try:
            write_plot(report, plot_path)
        except OSError as exc:
            _fail(f"cannot write the plot {plot_path}: {exc.strerror or exc}", EXIT_FAILED)
        click.echo(f"plot written to {plot_path}")


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from esc_bench.plot import INSTALL_HINT

        _fail(INSTALL_HINT, EXIT_USAGE)


def _write_json(report: dict[str, Any], path: str) -> None:
    try:
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_FAILED)


def _run(target: Target, params: Any) -> dict[str, Any]:
    from esc_bench.node_usage import local_listener_pids
    from esc_bench.report import build_report
    from esc_bench.run import run_load

    if target.local is None:
        assert target.cluster is not None
        addresses = _parse_cluster(target.cluster)
        _check_reachable(addresses, params.tls_ca, params.token)
        outcome = run_load(params, addresses, local_listener_pids(addresses), _show_progress)
        _end_progress()
        return build_report(outcome, {"description": f"cluster {','.join(addresses)}",
                                      "cluster": addresses})
    from eventstream.local_cluster import LocalCluster

    options: dict[str, Any] = {"log_level": "warning"}
    if target.wal_sync is not None:
        options["wal_sync"] = target.wal_sync
    if target.replication is not None:
        options["replication"] = target.replication
    with tempfile.TemporaryDirectory(prefix="esc-bench-") as root:
        if target.secure:
            from eventstream.tls import init_certs

            init_certs(Path(root) / "tls", target.local, ["127.0.0.1"])
            options["tls_dir"] = str(Path(root) / "tls")
        cluster = LocalCluster(Path(root) / "nodes", target.local, **options)
        cluster.start()
        try:
            try:
                cluster.leader(timeout=LEADER_WAIT_S)
            except TimeoutError:
                raise ParamError(_why_no_leader(cluster)) from None
            if target.secure:
                params = dataclasses.replace(params, tls_ca=cluster.tls_ca, token=cluster.create_token("esc-bench"))
            pids = {str(k): n.proc.pid for k, n in cluster.nodes.items() if n.proc is not None}
            click.echo(f"local cluster of {target.local} nodes up (wal_sync "
                       f"{'node default' if target.wal_sync is None else ('on' if target.wal_sync else 'off')})",
                       err=True)
            outcome = run_load(params, cluster.addresses, pids, _show_progress)
            _end_progress()
        finally:
            cluster.stop()
    description = (f"local {target.local} nodes, wal_sync "
                   f"{'default' if target.wal_sync is None else ('on' if target.wal_sync else 'off')}"
                   f"{', TLS and a token' if target.secure else ''}")
    return build_report(outcome, {"description": description, "local_nodes": target.local,
                                  "wal_sync": target.wal_sync, "replication": target.replication,
                                  "secure": target.secure})


def _parse_cluster(value: str) -> list[str]:
    from eventstream.client import parse_address
    from eventstream.errors import InvalidArgument

    addresses = [a.strip() for a in value.split(",") if a.strip()]
    if not addresses:
        raise ParamError("--cluster names no address")
    for address in addresses:
        try:
            parse_address(address)
        except InvalidArgument as exc:
            raise ParamError(f"--cluster: {exc}") from None
    return addresses


def _check_reachable(addresses: list[str], tls_ca: str | None, token: str | None) -> None:
    from eventstream.client import Client
    from eventstream.errors import EscError

    with Client(addresses, timeout_s=3.0, attempt_timeout_s=1.0, tls_ca=tls_ca, token=token) as client:
        try:
            client.status()
        except EscError as exc:
            raise ParamError(f"cannot reach the cluster at {','.join(addresses)}: {exc}") from None


def _check_node_has_replication_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "eventstream.cli", "node", "--help"],
                            capture_output=True, text=True, timeout=60, check=False)
    if "--replication" not in result.stdout:
        raise ParamError("this build's `esc node` has no --replication option to pass the value to")


def _why_no_leader(cluster: Any) -> str:
    for node in cluster.nodes.values():
        if not node.alive:
            last = (node.log_text().strip().splitlines() or ["(empty log)"])[-1]
            return f"local node {node.id} exited during start-up: {last}"
    return f"the local cluster elected no leader within {LEADER_WAIT_S:.0f} s"


_progress_state = {"shown": False}


def _show_progress(progress: Any) -> None:
    p99 = "-" if progress.p99_ms is None else f"{progress.p99_ms:,.2f} ms"
    phase = "warm-up " if progress.warming_up else ""
    line = (f"{phase}{progress.elapsed_s:6.1f} s  {progress.events_per_s:>12,.0f} events/s  "
            f"p99 {p99:>12}  acked {progress.events_total:>12,}  errors {progress.errors_total}")
    if sys.stderr.isatty():
        click.echo("\r" + line.ljust(100), nl=False, err=True)
        _progress_state["shown"] = True
    else:
        click.echo(line, err=True)


def _end_progress() -> None:
    if _progress_state["shown"]:
        click.echo("", err=True)
        _progress_state["shown"] = False


@main.command()
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@click.option("--fail-worse", type=float, metavar="PCT",
              help="exit 1 when a metric got worse by more than PCT percent")
def compare(before: str, after: str, fail_worse: float | None) -> None:
    """Print the change of each figure from report BEFORE (A) to AFTER (B)."""
    from esc_bench.report import compare_reports, params_differences, render_comparison

    reports = [_read_report(path) for path in (before, after)]
    deltas = compare_reports(*reports)
    click.echo(render_comparison(deltas, params_differences(*reports)))
    if fail_worse is not None:
        if fail_worse < 0 or math.isnan(fail_worse):
            _fail(f"--fail-worse must be >= 0, not {fail_worse}", EXIT_USAGE)
        worse = [d for d in deltas if d.worse and d.change_pct is not None and abs(d.change_pct) > fail_worse]
        if worse:
            _fail("worse beyond " + f"{fail_worse:g}%: " + ", ".join(f"{d.metric} {d.change_pct:+.1f}%" for d in worse),
                  EXIT_FAILED)


def _read_report(path: str) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE)
    except ValueError as exc:
        _fail(f"{path} is not JSON: {exc}", EXIT_USAGE)
    if not isinstance(report, dict) or "events_per_s" not in report:
        _fail(f"{path} is not an esc-bench --json report (no events_per_s)", EXIT_USAGE)
    return report


@main.command()
@click.option("--seconds", type=click.FloatRange(0.05, 30.0), default=0.5, show_default=True,
              help="time limit of each scenario")
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True), default=None,
              help="where to write (default: the system temp dir); pick the disk you care about")
@click.option("--quick", is_flag=True, help="only the 100-byte batch-1000 and 64 KiB scenarios")
def storage(seconds: float, directory: str | None, quick: bool) -> None:
    """SegmentLog append throughput, wal_sync off and on, beside plain os.write.

    Each scenario stops after --seconds or 256 MiB of payload, whichever comes first.
    """
    parent = directory or tempfile.gettempdir()
    click.echo(f"SegmentLog append, files under {parent}, up to {seconds:.2f} s per scenario")
    click.echo(_header())
    rows: list[AppendFigures] = []
    small_batches = (1000,) if quick else (1, 100, 1000)
    for wal_sync in (False, True):
        for batch in small_batches:
            rows.append(measure_append(parent, wal_sync=wal_sync, batch_records=batch,
                                       payload_bytes=100, seconds=seconds,
                                       bytes_max=_STORAGE_BYTES_MAX))
            click.echo(_row(rows[-1]))
        rows.append(measure_append(parent, wal_sync=wal_sync, batch_records=1000,
                                   payload_bytes=100, seconds=seconds,
                                   bytes_max=_STORAGE_BYTES_MAX, packed=True))
        click.echo(_row(rows[-1]))
        if wal_sync:
            rows.append(measure_append(parent, wal_sync=True, batch_records=1, payload_bytes=100,
                                       seconds=seconds, bytes_max=_STORAGE_BYTES_MAX, threads=4))
            click.echo(_row(rows[-1]))
        for batch in (1,) if quick else (1, 16):
            log_row, plain_row = compare_with_plain_write(
                parent, wal_sync=wal_sync, batch_records=batch, payload_bytes=65536,
                seconds=seconds, bytes_max=_STORAGE_BYTES_MAX,
            )
            click.echo(_row(log_row))
            click.echo(_row(plain_row) + f"   log/plain MB/s = "
                       f"{log_row.payload_mb_per_s / plain_row.payload_mb_per_s:.2f}")


def _header() -> str:
    return (f"{'path':<20}{'wal_sync':>9}{'batch':>7}{'payload':>9}{'records/s':>13}"
            f"{'MB/s':>9}{'fsync/s':>9}{'rec/fsync':>11}")


def _row(figures: AppendFigures) -> str:
    syncs = (f"{figures.fdatasyncs_per_s:>9.0f}{figures.records_per_fdatasync:>11.1f}"
             if figures.fdatasync_count else f"{'-':>9}{'-':>11}")
    return (f"{figures.label:<20}{'on' if figures.wal_sync else 'off':>9}"
            f"{figures.batch_records:>7}{figures.payload_bytes:>9}"
            f"{figures.records_per_s:>13,.0f}{figures.payload_mb_per_s:>9.1f}{syncs}")


if __name__ == "__main__":
    main()
