"""`esc-bench`: load generator and benchmark driver."""

from __future__ import annotations

import tempfile

import click

from eventstream.storage.append_benchmark import (
    AppendFigures,
    compare_with_plain_write,
    measure_append,
)

_STORAGE_BYTES_MAX = 256 * 1024 * 1024


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """EventStreamCore load generator."""


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
