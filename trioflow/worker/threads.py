"""``secede()`` and ``rejoin()``: a task gives its worker thread's slot back
while it waits, and asks for one again.

A task that waits (on futures of tasks it submitted, on a lock, on a
queue) holds one of its worker's ``nthreads`` slots while doing nothing;
on a worker with one thread, the tasks it waits for would never run.
``secede()`` takes the calling thread out of the worker's pool: the
executor starts a thread in its place, the worker's state machine counts
the task out of its slots (:class:`~trioflow.worker.state.SecedeEvent`) and
starts the next ready task, and the scheduler counts it out of the worker's
load.  ``rejoin()`` blocks until the state machine has a free slot for the
task again (:class:`~trioflow.worker.state.RejoinEvent`, granted before any
ready task starts).  A task that seceded and never rejoins simply finishes
outside the pool.
"""

from __future__ import annotations

from .executor import thread_state

__all__ = ["rejoin", "secede"]


def _current_worker(what: str) -> object:
    worker = getattr(thread_state, "worker", None)
    if worker is None or getattr(thread_state, "key", None) is None:
        raise ValueError(f"{what}() called outside of a task running on a worker")
    return worker


def secede() -> None:
    """Take the calling task's thread out of its worker's thread pool.

    Raises:
        ValueError: not called from inside a task running on a worker.
    """
    _current_worker("secede")._secede_current()  # type: ignore[attr-defined]


def rejoin() -> None:
    """Wait for a free slot on the worker for the calling, seceded task;
    return at once if it has not seceded.

    Raises:
        ValueError: not called from inside a task running on a worker.
    """
    _current_worker("rejoin")._rejoin_current()  # type: ignore[attr-defined]
