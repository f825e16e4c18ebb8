"""The life of a server (scheduler, worker, nanny): its :class:`Status`.

Every server goes ``created -> starting -> running -> closing -> closed``;
``failed`` replaces ``closed`` when :meth:`serve` ended with an error that
was not a clean close (the server did not come up, or its nursery raised).
A nanny is ``starting`` again while it restarts its worker process.  (A
worker that stops starting tasks under memory pressure stays ``running``:
pausing is its state machine's business, ``WorkerState.paused``.)

``status`` is for looking at; to wait for the end, every server has
``await server.wait_closed()``.  The members are strings (``StrEnum``), so
``server.status == "running"`` keeps working; they share their names with
``distributed.core.Status`` where the meaning is the same.
"""

from __future__ import annotations

import enum

__all__ = ["Status"]


class Status(enum.StrEnum):
    """Where a server is in its life."""

    #: Made, :meth:`serve` not called yet.
    created = "created"
    #: :meth:`serve` running, not ready yet (listening, registering).
    starting = "starting"
    #: Ready: ``nursery.start(server.serve)`` has returned.
    running = "running"
    #: Asked to close; :meth:`serve` is winding down.
    closing = "closing"
    #: :meth:`serve` has returned after a close.
    closed = "closed"
    #: :meth:`serve` ended with an error.
    failed = "failed"

    def __repr__(self) -> str:
        return f"<Status.{self.name}>"


#: Statuses after which nothing more happens.
FINAL = frozenset({Status.closed, Status.failed})


def ended_in_failure(exc: BaseException) -> bool:
    """Whether a server's ``serve`` ending with ``exc`` is ``failed``: anything
    but cancellation (its nursery was cancelled from outside) or Ctrl+C, even
    inside exception groups."""
    import trio

    if isinstance(exc, BaseExceptionGroup):
        return any(ended_in_failure(e) for e in exc.exceptions)
    return not isinstance(exc, (trio.Cancelled, KeyboardInterrupt))
