"""Workers' scratch directories, and removing those of dead workers.

A worker keeps spilled data in a directory of its own (``trioflow-worker-*``)
and removes it when it exits.  A worker killed outright cannot: its nanny
removes it then; without a nanny, the next worker to start in the same parent
directory does, recognising it by the owner file naming a process of this
host that no longer exists.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket

from .system import process_start_time

__all__ = ["WORKSPACE_PREFIX", "claim_workspace", "purge_stale_workspaces"]

logger = logging.getLogger("trioflow.worker")

WORKSPACE_PREFIX = "trioflow-worker-"
_OWNER_FILE = "owner"


def _process_id() -> str:
    """This process, on this host, unambiguously (a PID can be reused)."""
    return f"{socket.gethostname()} {os.getpid()} {process_start_time(os.getpid()):.3f}"


def claim_workspace(directory: str) -> None:
    with open(os.path.join(directory, _OWNER_FILE), "w") as f:
        f.write(_process_id())


def purge_stale_workspaces(parent: str) -> list[str]:
    """Remove the directories that workers on this host left behind when
    they were killed outright (SIGKILL, OOM killer) with no nanny to clean
    up: those whose owner process is gone.  Returns what was removed."""
    removed: list[str] = []
    host = socket.gethostname()
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(WORKSPACE_PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            with open(os.path.join(path, _OWNER_FILE)) as f:
                owner_host, pid, created = f.read().split()
        except (OSError, ValueError):
            continue  # not claimed (yet): not ours to judge
        if owner_host != host:
            continue
        try:
            started = process_start_time(int(pid))
        except ValueError:
            started = None
        alive = started is not None and f"{started:.3f}" == created
        if not alive:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logger.info("removed %d directories of dead workers in %s", len(removed), parent)
    return removed
