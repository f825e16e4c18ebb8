"""Detect threads, sockets and child processes a test leaves behind.

:class:`LeakChecker` snapshots the process before a test and compares after
it, giving stragglers a short grace period (a thread finishing its last job,
a child being reaped).  Trio's own idle thread-cache threads are not leaks:
Trio reuses them and retires them after ten idle seconds.
"""

from __future__ import annotations

import os
import threading
import time

import psutil

from ..errors import LeakError

__all__ = ["LeakChecker", "LeakError"]


def _socket_inodes() -> set[str]:
    out: set[str] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:  # not Linux: count nothing
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            out.add(target)
    return out


def _threads() -> dict[int, str]:
    return {t.ident: t.name for t in threading.enumerate() if t.ident is not None and not t.name.startswith("Trio thread")}


def _children() -> dict[int, str]:
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            out[p.pid] = " ".join(p.cmdline()[:4])
        except psutil.Error:
            continue
    return out


class LeakChecker:
    def __init__(self, grace: float = 3.0) -> None:
        self.grace = grace
        self.threads = _threads()
        self.sockets = _socket_inodes()
        self.children = _children()

    def leaks(self) -> list[str]:
        problems = []
        threads = {i: n for i, n in _threads().items() if i not in self.threads}
        if threads:
            problems.append(f"threads left running: {sorted(threads.values())}")
        sockets = _socket_inodes() - self.sockets
        if sockets:
            problems.append(f"{len(sockets)} sockets left open")
        children = {p: c for p, c in _children().items() if p not in self.children}
        if children:
            problems.append(f"child processes left running: {children}")
        return problems

    def check(self) -> None:
        """Raise :class:`LeakError` if anything is still there after the grace period."""
        deadline = time.monotonic() + self.grace
        while True:
            problems = self.leaks()
            if not problems:
                return
            if time.monotonic() > deadline:
                raise LeakError("; ".join(problems))
            time.sleep(0.02)
