"""Sizing a local cluster from this machine, as dask sizes it."""

from __future__ import annotations

import math
import os

__all__ = ["cpu_count", "nprocesses_nthreads"]


def cpu_count(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: its affinity mask (where the OS has
    one), lowered to a container's CPU quota (cgroup v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us``; a fractional quota rounds up), as dask counts them."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, quota)
    return max(count, 1)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_cpu_quota(root: str) -> int | None:
    """Whole CPUs the cgroup quota allows (rounded up), or None for no quota."""
    pairs: list[tuple[str | None, str | None]] = []
    own = _read("/proc/self/cgroup")
    if own:
        # cgroup v2: "0::/some/group"; its cpu.max, then the root's.
        for line in own.splitlines():
            if line.startswith("0::"):
                group = line[3:].strip().rstrip("/")
                text = _read(f"{root}{group}/cpu.max")
                pairs.append(tuple(text.split()) if text and len(text.split()) == 2 else (None, None))  # type: ignore[arg-type]
    text = _read(f"{root}/cpu.max")
    if text and len(text.split()) == 2:
        pairs.append(tuple(text.split()))  # type: ignore[arg-type]
    for name in ("cpu,cpuacct", "cpuacct,cpu", "cpu"):  # cgroup v1
        pairs.append((_read(f"{root}/{name}/cpu.cfs_quota_us"), _read(f"{root}/{name}/cpu.cfs_period_us")))
    for quota, period in pairs:
        try:
            q, p = int(quota), int(period)  # type: ignore[arg-type]
        except (TypeError, ValueError):  # "max", missing: no quota here
            continue
        if q > 0 and p > 0:
            return max(math.ceil(q / p), 1)
    return None


def nprocesses_nthreads(n: int | None = None) -> tuple[int, int]:
    """How ``n`` cores split into worker processes and threads per process.

    Up to four cores, one single-threaded process each; beyond that, the
    smallest divisor of ``n`` that is at least its square root is the number
    of processes, so the split is as square as possible with processes >=
    threads (``8 -> (4, 2)``, ``32 -> (8, 4)``, a prime ``p -> (p, 1)``).
    """
    if n is None:
        n = cpu_count()
    if n <= 4:
        return n, 1
    root = math.sqrt(n)
    processes = min(d for d in range(1, n + 1) if n % d == 0 and d >= root)
    return processes, n // processes
