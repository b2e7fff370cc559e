"""Shrink a pytest-benchmark JSON into the committed regression baseline of `make bench-compare`.

pytest-benchmark's --benchmark-json keeps every round's timing (megabytes for the quick suite);
a comparison needs only the summary statistics, so the per-round list is dropped.

    python tools/bench_baseline.py RUN.json bench/results/baseline/quick.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: bench_baseline.py RUN.json BASELINE.json", file=sys.stderr)
        return 2
    source, target = (Path(a) for a in argv)
    try:
        run = json.loads(source.read_text())
        benchmarks = run["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"bench_baseline: {source} is not a pytest-benchmark JSON: {exc}", file=sys.stderr)
        return 1
    for benchmark in benchmarks:
        benchmark.get("stats", {}).pop("data", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(run, indent=1, sort_keys=True) + "\n")
    print(f"baseline of {len(benchmarks)} benchmarks written to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
