"""Entry points that settle how the interpreter runs before anything is imported.

``trioflow-scheduler`` runs on glibc's ``malloc`` instead of CPython's own
small-object allocator (pymalloc).  A scheduler allocates and frees a few
kilobytes of small objects per task, and a few of the objects made while a
graph runs (a connection's handler, a timer, a log record) live on after it.
pymalloc returns a 1 MiB arena to the system only when nothing in it lives,
so those few survivors pin most of a graph's peak memory for the life of the
process: measured, ten rounds of 10,000 tasks took a scheduler from 35 MiB
idle to 66 MiB after release.  On glibc's heap the same survivors pin single
4 KiB pages, and :func:`trioflow.process.malloc.trim_process_memory` (called by the
scheduler once a graph's tasks are gone) hands the rest back: the same ten
rounds end within 1% of the first.  The cost is about 5% more memory per
held task (glibc's per-allocation header) and no measurable speed; at idle,
after the start-up trim, none.

The allocator is chosen when the interpreter starts, so the entry point
replaces itself (``execve``: same PID, same arguments) once, with
``PYTHONMALLOC=malloc`` added to the environment.  A ``PYTHONMALLOC`` the user
set is left alone (``PYTHONMALLOC=pymalloc`` keeps CPython's allocator), and
nothing happens off Linux or on a C library without ``malloc_trim``.
"""

from __future__ import annotations

import os
import sys

__all__ = ["scheduler_main", "use_system_malloc"]


def use_system_malloc() -> None:
    """Re-execute this process with ``PYTHONMALLOC=malloc`` where that helps.

    Returns (without doing anything) when ``PYTHONMALLOC`` is already set,
    off Linux, on a C library other than glibc, or if the exec fails.
    """
    if "PYTHONMALLOC" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
    except (ValueError, OSError):  # musl and friends: no malloc_trim
        return
    argv = list(getattr(sys, "orig_argv", ()))
    if not argv or not sys.executable:
        return
    env = dict(os.environ, PYTHONMALLOC="malloc")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
    except OSError:
        return


def scheduler_main() -> None:
    """``trioflow-scheduler``: the command line, on the system allocator.

    The re-exec comes first, before anything is imported.  Parsing the
    options with click first and handing them over, so that the serving
    process never imports click (1 MiB), was tried: it added 160 ms to a
    cold start (click, trio and the CLI imported twice).
    """
    use_system_malloc()
    from ..cli import scheduler_main as main

    main()
