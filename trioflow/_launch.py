"""Entry points that settle how the interpreter runs before anything is imported.

``trioflow-scheduler`` runs on glibc's ``malloc`` instead of CPython's own
small-object allocator (pymalloc).  A scheduler allocates and frees a few
kilobytes of small objects per task, and a few of the objects made while a
graph runs (a connection's handler, a timer, a log record) live on after it.
pymalloc returns a 1 MiB arena to the system only when nothing in it lives,
so those few survivors pin most of a graph's peak memory for the life of the
process: measured, ten rounds of 10,000 tasks took a scheduler from 35 MiB
idle to 66 MiB after release.  On glibc's heap the same survivors pin single
4 KiB pages, and :func:`trioflow.memory.trim_process_memory` (called by the
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

import json
import os
import sys

__all__ = ["scheduler_main", "use_system_malloc"]


#: Carries the checked options of ``trioflow-scheduler`` across its re-exec.
CONFIG_ENV = "_TRIOFLOW_SCHEDULER_CONFIG"


def _system_malloc_helps() -> bool:
    if "PYTHONMALLOC" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError):  # musl and friends: no malloc_trim
        return False
    return bool(getattr(sys, "orig_argv", ())) and bool(sys.executable)


def use_system_malloc(extra_env: dict[str, str] | None = None) -> None:
    """Re-execute this process with ``PYTHONMALLOC=malloc`` where that helps.

    Returns (without doing anything) when ``PYTHONMALLOC`` is already set,
    off Linux, on a C library other than glibc, or if the exec fails.
    """
    if not _system_malloc_helps():
        return
    env = dict(os.environ, PYTHONMALLOC="malloc", **(extra_env or {}))
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, list(sys.orig_argv), env)
    except OSError:
        return


def scheduler_main() -> None:
    """``trioflow-scheduler``: the command line, on the system allocator.

    Where the process re-executes itself anyway (see above), the options are
    parsed and checked first, by click, and the new process gets them as
    JSON in its environment: it serves without importing click at all
    (1 MiB less idle memory).  ``--help``, ``--version`` and bad options end
    in the first process, exactly as without the re-exec.
    """
    config = os.environ.pop(CONFIG_ENV, None)
    if config is not None:
        _serve_scheduler(config)
        return
    if _system_malloc_helps() and "_TRIOFLOW_SCHEDULER_COMPLETE" not in os.environ:
        # (Shell completion is click's business, in click's main().)
        from .cli import parse_scheduler_args

        parsed = parse_scheduler_args(sys.argv[1:])
        use_system_malloc({CONFIG_ENV: json.dumps(parsed)})
    from .cli import scheduler_main as main

    main()


def _serve_scheduler(config: str) -> None:
    from .daemon import UserError, run_scheduler_process

    prog = "trioflow-scheduler"
    try:
        run_scheduler_process(json.loads(config))
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # during start-up, before the signal handlers (click says Abort)
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
