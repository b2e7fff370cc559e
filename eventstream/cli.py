"""`esc`: the operator's command line. Later capabilities add their commands to this group."""

from __future__ import annotations

import click

from eventstream import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="esc")
def main() -> None:
    """EventStreamCore: Raft-replicated event ingestion."""


if __name__ == "__main__":
    main()
