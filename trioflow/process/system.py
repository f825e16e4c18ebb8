"""This machine and its processes: memory, RSS, CPU use, start times, host address.

On Linux the answers come straight from ``/proc`` (what psutil reads there
too, computed the same way); elsewhere from psutil.  psutil is imported on
first need, by :func:`psutil_module` only: a worker or scheduler on Linux
never loads it (about a megabyte of resident memory and several milliseconds
of start-up per process).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from types import ModuleType

__all__ = [
    "ProcessMeter",
    "default_host",
    "process_rss",
    "process_start_time",
    "psutil_module",
    "total_memory",
]

_PROC = sys.platform.startswith("linux") and os.path.exists("/proc/self/statm")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if _PROC else 0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if _PROC else 0


def psutil_module() -> ModuleType:
    """psutil, imported now (the one place trioflow imports it)."""
    import psutil

    return psutil


def total_memory() -> int:
    """Bytes of physical memory (psutil's ``virtual_memory().total``)."""
    if _PROC:
        try:
            with open("/proc/meminfo", "rb") as f:
                for line in f:
                    if line.startswith(b"MemTotal:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    return int(psutil_module().virtual_memory().total)


def process_rss(pid: int | None = None) -> int | None:
    """Resident set size of process ``pid`` (this one by default) in bytes,
    or None when there is no such process (any more)."""
    if _PROC:
        try:
            with open(f"/proc/{'self' if pid is None else int(pid)}/statm", "rb") as f:
                return int(f.read().split()[1]) * _PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return None
    psutil = psutil_module()
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started, in seconds since the epoch (psutil's
    ``Process.create_time()``), or None when there is no such process.

    With the PID, this names a process unambiguously (PIDs are reused).
    """
    if pid <= 0:
        return None
    if _PROC:
        try:
            with open(f"/proc/{int(pid)}/stat", "rb") as f:
                data = f.read()
            # The name, in parentheses, may contain anything: fields start after the last ")".
            start_ticks = data[data.rfind(b")") + 2 :].split()[19]
            return float(start_ticks) / _CLOCK_TICKS + _boot_time()
        except (OSError, ValueError, IndexError):
            return None
    psutil = psutil_module()
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


class ProcessMeter:
    """RSS and CPU use of this process.

    ``cpu_percent()`` is the CPU time used since the previous call (or since
    the meter was made) over the wall time elapsed, in percent of one core
    (psutil's ``Process.cpu_percent()``, which the first call of returns 0.0).
    Each meter keeps its own baseline.
    """

    __slots__ = ("_cpu", "_wall")

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def rss(self) -> int | None:
        """Resident set size in bytes (None if it cannot be read)."""
        return process_rss()

    def cpu_percent(self) -> float:
        cpu, wall = time.process_time(), time.monotonic()
        d_cpu, d_wall = cpu - self._cpu, wall - self._wall
        self._cpu, self._wall = cpu, wall
        if d_wall <= 0:
            return 0.0
        return round(d_cpu / d_wall * 100, 1)


def default_host() -> str:
    """This machine's first non-loopback IPv4 address (from psutil), or 127.0.0.1."""
    try:
        for _name, addrs in psutil_module().net_if_addrs().items():
            for a in addrs:
                if a.family == socket.AF_INET and not a.address.startswith("127."):
                    return str(a.address)
    except Exception:  # noqa: BLE001 - best effort
        pass
    return "127.0.0.1"
