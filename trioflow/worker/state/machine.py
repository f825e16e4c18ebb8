"""The machine: :class:`WorkerState`, events in, instructions out.

Its behaviour comes from the files beside this one, as a chain of classes
(:class:`~.entities.WorkerStateRecord` -> :class:`~.fetching.Fetching` ->
:class:`~.execution.Execution` -> :class:`~.link.SchedulerLink` ->
:class:`WorkerState`); :meth:`WorkerState.handle` dispatches through
:data:`~.transitions.HANDLERS`, then starts what may start and collects
the messages due.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...protocol.messages import AddKeys, ReleaseWorkerData
from .events import Event, FreeKeysEvent
from .instructions import Instruction, SendMsg
from .link import SchedulerLink
from .transitions import HANDLERS
from .validation import check

__all__ = ["WorkerState"]


class WorkerState(SchedulerLink):
    """The worker's sans-IO state machine (see :mod:`trioflow.worker.state`).

    Args:
        address: this worker's contact address.
        nthreads: executor threads.
        resources: resources this worker has (names to amounts).
        prefetch: executor slots beyond ``nthreads`` (default:
            :data:`~.entities.PREFETCH_MAX` per thread).
        max_transfer_bytes: bytes per request to a peer at most.
        max_concurrent_fetches: peers fetched from at once at most.
        validate: check every invariant after each event.
    """

    def handle(self, event: Event) -> list[Instruction]:
        """Apply ``event``; return what the shell must do.

        Raises:
            InvalidWorkerEvent: the event does not fit; nothing changed.
        """
        HANDLERS[type(event)](self, event)
        self._start_runs()
        if self.fetch_by_worker:  # (_schedule and _flush_pending inline: once per task)
            self._start_transfers()
        if self._pending_add_keys:
            self._out.append(SendMsg(AddKeys(nbytes=self._pending_add_keys)))
            self._pending_add_keys = {}
        if self._pending_release:
            self._out.append(SendMsg(ReleaseWorkerData(keys=self._pending_release)))
            self._pending_release = []
        if self._erred_now:
            self._forget_erred()
        out, self._out = self._out, []
        if self.validate_after_each:
            self.validate()
        return out

    def handle_many(self, events: Iterable[Event]) -> list[Instruction]:
        """Apply ``events`` in order, then start what may start (once).

        Raises:
            InvalidWorkerEvent: an event does not fit; those before it were
                applied, and their instructions are lost.
        """
        try:
            for ev in events:
                HANDLERS[type(ev)](self, ev)
        except BaseException:
            self._erred_now.clear()
            raise
        self._schedule()
        self._flush_pending()
        if self._erred_now:
            self._forget_erred()
        out, self._out = self._out, []
        if self.validate_after_each:
            self.validate()
        return out

    def _schedule(self) -> None:
        """Hand ready tasks to the executor and start transfers."""
        self._start_runs()
        if self.fetch_by_worker:
            self._start_transfers()

    def _forget_erred(self) -> None:
        """Forget the tasks that erred in this event, once reported.

        The scheduler never frees a task that erred here (it frees only
        holders of data), so it would stay, run spec and all, for ever; it
        is never needed again (a retry arrives as a new task).  Only keys
        still 'erred': a failed run may also have been superseded by a put
        value, or turned into a fetch.  Applied as the scheduler's
        FreeKeysEvent would be, after the event's own instructions.
        """
        erred = [k for k in self._erred_now if (t := self.tasks.get(k)) is not None and t.state == "erred"]
        self._erred_now = []
        if not erred:
            return
        if self.validate_after_each:
            self.validate()
        self._free_keys(FreeKeysEvent(keys=erred))
        self._schedule()
        self._flush_pending()

    def _flush_pending(self) -> None:
        """The messages that gather a whole event's changes, now due."""
        if self._pending_add_keys:
            self._out.append(SendMsg(AddKeys(nbytes=self._pending_add_keys)))
            self._pending_add_keys = {}
        if self._pending_release:
            self._out.append(SendMsg(ReleaseWorkerData(keys=self._pending_release)))
            self._pending_release = []

    def validate(self) -> None:
        """Assert every invariant (see :mod:`~.validation`)."""
        check(self)
