"""``trioflow.print`` and ``trioflow.warn``: output of a task shown on the clients.

Both act here as the builtins do (print to the worker's stdout, warn in
the worker) and, inside a task, also log the call as an event of topic
``print`` or ``warn``, which every client prints or warns on arrival (see
:mod:`trioflow.client.events`).
"""

from __future__ import annotations

import builtins
import sys
import warnings
from typing import Any

from .executor import thread_state

__all__ = ["print", "warn"]


def _task_worker() -> Any:
    if getattr(thread_state, "key", None) is None:
        return None
    return getattr(thread_state, "worker", None)


def print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:  # noqa: A001
    """The builtin ``print``; in a task, also on every client.

    Raises:
        TypeError: ``file`` other than None, ``sys.stdout`` or ``sys.stderr``
            in a task (a client has no other file to print to).
    """
    builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
    worker = _task_worker()
    if worker is None:
        return
    if file is None or file is sys.stdout:
        where = 1
    elif file is sys.stderr:
        where = 2
    else:
        raise TypeError(f"trioflow.print in a task prints to sys.stdout or sys.stderr, not {file!r}")
    worker.log_event("print", {"args": args, "sep": sep, "end": end, "file": where, "flush": flush})


def warn(message: Any, category: type[Warning] | None = None, stacklevel: int = 1, source: Any = None) -> None:
    """``warnings.warn``; in a task, also on every client."""
    warnings.warn(message, category=category, stacklevel=stacklevel + 1, source=source)
    worker = _task_worker()
    if worker is not None:
        worker.log_event("warn", {"message": message, "category": category})
