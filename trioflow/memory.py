"""Parsing memory sizes and limits ("5GB", "5000M", 0.5, "auto", 0)."""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any

from .system import total_memory

__all__ = ["MALLOC_ENV", "format_bytes", "limit_malloc_arenas", "parse_bytes", "parse_memory_limit", "trim_process_memory"]

#: Environment for worker processes (set by the nanny unless already set):
#: glibc keeps the freed memory of a process's heap unless told to return it,
#: and raises its mmap threshold after big frees, so a worker that spilled or
#: released its data would go on showing the RSS it had.  A fixed trim
#: threshold switches both behaviours off.
MALLOC_ENV = {"MALLOC_TRIM_THRESHOLD_": "65536"}


@functools.cache
def _libc() -> Any:
    """glibc through ctypes, or None (not Linux, or another C library)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl has no malloc_trim: not glibc
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def trim_process_memory() -> bool:
    """Give the C heap's free memory back to the operating system (glibc);
    False where that is not possible."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


_M_ARENA_MAX = -8  # glibc's mallopt parameter number

#: What :func:`limit_malloc_arenas` set in this process (None: nothing).
arena_limit: int | None = None


def limit_malloc_arenas(n: int) -> bool:
    """Let glibc's malloc use at most ``n`` arenas in this process.

    glibc gives threads their own heaps (arenas), and memory freed in one is
    not reused by another: a worker's executor thread builds a result in its
    arena while the event loop thread receives data into the main heap, so
    both grow to their own peaks.  With as many arenas as executor threads,
    the event loop shares one; measured on a 10M-row dataframe groupby, the
    peak worker RSS drops 290 -> 270 MiB at no measurable cost in time.

    Call it before the process starts threads (glibc fixes the limit when
    the first thread heap is made).  Does nothing when ``MALLOC_ARENA_MAX``
    is set in the environment (the user decided), or off glibc.
    """
    global arena_limit
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    libc = _libc()
    if libc is None or not libc.mallopt(_M_ARENA_MAX, max(1, int(n))):
        return False
    arena_limit = max(1, int(n))
    return True


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
    "p": 10**15, "pb": 10**15, "pib": 2**50,
}


def parse_bytes(text: str | int | float) -> int:
    """``"5GB"`` -> 5_000_000_000; ``"5000M"``; ``"1.5 GiB"``; ``123``.

    Raises:
        ValueError: not a size; the message quotes it.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"size must not be negative: {text!r}")
        return int(text)
    s = text.strip().lower().replace("_", "")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", s)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a size: {text!r} (expected a number of bytes, or like 5GB, 5000M, 1.5GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_memory_limit(limit: str | int | float | None, nthreads: int = 1, n_workers: int = 1, total: int | None = None) -> int:
    """Bytes a worker may use: an int of bytes, a float fraction of total
    memory (0 < x <= 1), a string like ``"5GB"``, ``"auto"`` (total memory
    shared out by threads), or 0/None for no limit.

    Raises:
        ValueError: anything else; the message says what is accepted.
    """
    if total is None:
        total = total_memory()
    if limit is None or limit == 0 or limit == "0":
        return 0
    if isinstance(limit, str):
        s = limit.strip().lower()
        if s == "auto":
            return int(total / max(n_workers, 1))
        try:
            value = float(s)
        except ValueError:
            return min(parse_bytes(limit), total)
        limit = value
    if isinstance(limit, bool):
        raise ValueError(f"memory limit must be a size, got {limit!r}")
    if isinstance(limit, float) and 0 < limit <= 1:
        return int(total * limit)
    if limit < 0:
        raise ValueError(f"memory limit must not be negative, got {limit!r}")
    return min(int(limit), total)


def format_bytes(n: float) -> str:
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size * 0.9:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
