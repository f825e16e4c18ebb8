"""Sizing a local cluster from this machine, as dask sizes it."""

from __future__ import annotations

import math
import os

__all__ = ["cpu_count", "nprocesses_nthreads"]


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


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
