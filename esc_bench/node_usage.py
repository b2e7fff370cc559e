"""CPU seconds and peak RSS of the cluster's node processes, read with psutil.

CPU is counted over the measurement window only (begin() at the end of warm-up, end() after
the last answer), so CPU per event is not diluted by start-up and warm-up work. Over the same
window, from /proc: each node's context switches summed over its live threads (voluntary ones
are a thread sleeping and being woken: a wake-up; involuntary ones are preemption by a thread
wanting the core). System calls are not counted here: /proc/PID/io counts file reads and writes
only, not socket sends (`perf stat -e raw_syscalls:sys_enter -p PID` counts them all).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass

import psutil

from eventstream.client import parse_address

# A label that starts with this measures only the process's main thread (the thread whose id is
# the pid: for a node, the event loop that runs Raft, the log and the clients), not the process.
MAIN_THREAD_LABEL = "main-thread-"


@dataclass(slots=True)
class NodeFigures:
    node: str
    pid: int
    cpu_s: float | None
    peak_rss_bytes: int | None
    alive: bool
    wakeups: int | None = None
    preemptions: int | None = None


@dataclass(slots=True, frozen=True)
class _Counters:
    wakeups: int
    preemptions: int


def _counters(pid: int) -> _Counters | None:
    """Voluntary and involuntary switches summed over pid's threads, or None where /proc cannot
    say (another OS, the process gone)."""
    voluntary = involuntary = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/status", encoding="ascii", errors="replace") as status:
                    for line in status:
                        if line.startswith("voluntary_ctxt_switches:"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            involuntary += int(line.split()[1])
            except FileNotFoundError:
                continue  # a thread that ended between the listing and the read
    except (OSError, ValueError, IndexError):
        return None
    return _Counters(voluntary, involuntary)


class NodeUsage:
    def __init__(self, pids: dict[str, int]) -> None:
        self._processes: dict[str, psutil.Process] = {}
        for label, pid in pids.items():
            try:
                self._processes[label] = psutil.Process(pid)
            except psutil.Error:
                continue
        self._pids = dict(pids)
        self._cpu_begin: dict[str, float] = {}
        self._counters_begin: dict[str, _Counters] = {}
        self._rss_peak: dict[str, int] = {}

    @property
    def known(self) -> bool:
        return bool(self._processes)

    def begin(self) -> None:
        for label, process in self._processes.items():
            cpu = _cpu_s(process, label)
            if cpu is not None:
                self._cpu_begin[label] = cpu
            counters = _counters(process.pid)
            if counters is not None:
                self._counters_begin[label] = counters
        self.sample()

    def sample(self) -> None:
        for label, process in self._processes.items():
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            self._rss_peak[label] = max(rss, self._rss_peak.get(label, 0))

    def end(self) -> list[NodeFigures]:
        self.sample()
        rows = []
        for label, pid in self._pids.items():
            process = self._processes.get(label)
            cpu_now = _cpu_s(process, label) if process is not None else None
            begin = self._cpu_begin.get(label)
            cpu = None if cpu_now is None or begin is None else round(cpu_now - begin, 3)
            peak = _peak_rss_bytes(pid)
            if peak is None:
                peak = self._rss_peak.get(label)
            alive = process is not None and process.is_running()
            row = NodeFigures(label, pid, cpu, peak, alive)
            before, after = self._counters_begin.get(label), _counters(pid) if alive else None
            if before is not None and after is not None:
                row.wakeups = after.wakeups - before.wakeups
                row.preemptions = after.preemptions - before.preemptions
            rows.append(row)
        return rows


def _cpu_s(process: psutil.Process, label: str = "") -> float | None:
    try:
        if label.startswith(MAIN_THREAD_LABEL):
            for thread in process.threads():
                if thread.id == process.pid:
                    return float(thread.user_time + thread.system_time)
            return None
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def _peak_rss_bytes(pid: int) -> int | None:
    """The kernel's own high-water mark (Linux VmHWM): exact, unlike sampling."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def local_listener_pids(addresses: list[str]) -> dict[str, int]:
    """Pids of the processes on this machine that listen on the given host:port addresses; an
    address served by another machine is left out (its CPU cannot be read from here)."""
    wanted: dict[int, str] = {}
    local_ips = _local_ips()
    for address in addresses:
        host, port = parse_address(address)
        try:
            ip = socket.gethostbyname(host)
        except OSError:
            continue
        if ipaddress.ip_address(ip).is_loopback or ip in local_ips:
            wanted[port] = address
    if not wanted:
        return {}
    found: dict[str, int] = {}
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return {}
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid is not None:
            listener = wanted.get(conn.laddr.port)
            if listener is not None:
                found[listener] = conn.pid
    return {address: found[address] for address in addresses if address in found}


def _local_ips() -> set[str]:
    ips = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family == socket.AF_INET and entry.address:
                ips.add(entry.address)
    return ips
