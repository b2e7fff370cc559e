"""What one fdatasync costs on this disk, from one process or from several at once.

A local cluster puts every node's WAL on the same disk, so each follower's sync competes with
the others'. This overwrites --bytes at consecutive offsets of a file written in advance (as a
wal_sync segment is: no filesystem metadata changes) and fdatasyncs after each write, --count
times, in each of --processes processes at once, and prints each process's latency
percentiles and CPU per sync.

    python tools/fdatasync_latency.py --processes 1 3 --bytes 1300 --count 3000 [--dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time


def one_process(path: str, size: int, count: int) -> tuple[float, float, float, float]:
    """p50, p90, mean latency (ms) and CPU per sync (us) of `count` write+fdatasync pairs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"\0" * (size * count + 4096))
        os.fsync(fd)
        record = b"x" * size
        latencies = []
        cpu_started = time.process_time()
        for i in range(count):
            started = time.perf_counter()
            os.pwrite(fd, record, i * size)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - started)
        cpu = time.process_time() - cpu_started
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    return (latencies[count // 2] * 1e3, latencies[count * 9 // 10] * 1e3,
            sum(latencies) / count * 1e3, cpu / count * 1e6)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 3])
    p.add_argument("--bytes", type=int, default=1300)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--dir", default=None, help="where the files go (default: a temp dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for n in args.processes:
            paths = [os.path.join(folder, f"sync-{n}-{k}") for k in range(n)]
            with multiprocessing.Pool(n) as pool:
                rows = pool.starmap(one_process, [(path, args.bytes, args.count) for path in paths])
            for k, (p50, p90, mean, cpu) in enumerate(rows):
                print(f"{n} at once, process {k + 1}: p50 {p50:.3f} ms  p90 {p90:.3f} ms  "
                      f"mean {mean:.3f} ms  CPU {cpu:.1f} us per sync")


if __name__ == "__main__":
    main()
