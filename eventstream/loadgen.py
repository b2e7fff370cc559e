"""`esc-bench`: load generator and benchmark driver."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """EventStreamCore load generator."""


if __name__ == "__main__":
    main()
