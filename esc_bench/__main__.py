"""`python -m esc_bench` is `esc-bench`."""

from esc_bench.cli import main

main()
