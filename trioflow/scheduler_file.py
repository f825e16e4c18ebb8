"""The scheduler file: JSON with the scheduler's address, for clients and workers.

A scheduler started with ``scheduler_file=`` writes it once it listens (see
:class:`~trioflow.Scheduler`); :func:`read_scheduler_file` reads it and
:func:`wait_for_scheduler_file` waits for it to appear first.  Kept apart from
the client so that a worker given ``--scheduler-file`` does not load the
client to read one.
"""

from __future__ import annotations

import json
import os

import trio

__all__ = ["read_scheduler_file", "wait_for_scheduler_file"]


def read_scheduler_file(path: str) -> str:
    """The scheduler address written in ``path``."""
    with open(path) as f:
        info = json.load(f)
    address = info.get("address")
    if not isinstance(address, str):
        raise ValueError(f"scheduler file {path!r} has no address")
    return address


async def wait_for_scheduler_file(path: str, timeout: float) -> str:
    """Wait up to ``timeout`` seconds for ``path`` to appear, then read it.

    Raises:
        FileNotFoundError: it did not appear in time.
        ValueError: it holds no address.
    """
    try:
        with trio.fail_after(timeout):
            delay = 0.005  # often at first: the scheduler is usually starting too
            while not os.path.exists(path):
                await trio.sleep(delay)
                delay = min(delay * 1.5, 0.1)
    except trio.TooSlowError:
        raise FileNotFoundError(f"scheduler file {path!r} did not appear within {timeout}s") from None
    return read_scheduler_file(path)
