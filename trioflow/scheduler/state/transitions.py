"""Task transitions: the table and every function in it.

:data:`TRANSITIONS` maps ``(start, finish)`` to the function that moves a
task between those states; it is data, and it is the whole list of legal
moves.  Asking for a pair that is not in it (and cannot go through
'released') raises :class:`~.exceptions.InvalidTransition` before anything
changes.  A transition function changes one task and its links, appends the
messages it causes to ``_out``, and writes follow-up moves into ``recs``;
:meth:`TransitionsLayer._transitions` runs them until nothing is left.

Two moves are not in the table because they are not a decision about one
task: ``queued -> processing`` (:meth:`~.queuing.QueuingLayer._fill_from_queue`)
and a stolen ``processing -> processing`` / ``no-worker``
(:meth:`~.stealing.StealingLayer._steal_response`); both count themselves
with ``_count_move``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...protocol.messages import FreeKeys, KeyCancelled
from .core import _key_in_memory
from .entities import (
    NO_TASKS,
    Recommendations,
    TaskState,
    TaskStateName,
    TransientStateName,
    WorkerState,
    _add,
)
from .events import ToClient, ToWorker
from .exceptions import InvalidTransition, LostData
from .queuing import QueuingLayer


class TransitionsLayer(QueuingLayer):
    def _transitions(self, recs: Recommendations) -> None:
        """Run ``recs`` and everything they lead to, until nothing is left.

        Two kinds of decision wait until the cascade is quiet, because a
        later transition in the same event can overturn them: releasing a
        dependency that lost its last waiter (see :meth:`_drop_waiter`), and
        sending a task to a worker.  Sending first and releasing later sends
        a ``ComputeTask`` and a ``FreeKeys`` for the same key in one batch
        (a worker thread spent for nothing); so tasks become 'processing'
        only once all releases are done, highest priority first.
        """
        while True:
            while recs:
                ts, finish = recs.popitem()
                self._transition(ts, finish, recs)
            if self._maybe_unwanted:
                candidates, self._maybe_unwanted = self._maybe_unwanted, set()
                for dts in candidates:
                    if not dts.waiters and not dts.who_wants and dts.state in ("memory", "waiting", "no-worker", "queued", "processing"):
                        recs[dts] = "released"
                if recs:
                    continue
            self._flush_unrunnable(recs)
            if recs:
                continue
            if self._to_fill and self.queued:
                self._fill_from_queue()
                if recs:
                    continue
            if not self._to_run:
                return
            ready, self._to_run = self._to_run, set()
            for ts in sorted(ready, key=lambda t: t.priority):
                if ts.state in ("waiting", "no-worker") and not ts.waiting_on:
                    self._transition(ts, "processing", recs, deferred=False)

    def _transition(self, ts: TaskState, finish: TaskStateName, recs: Recommendations, deferred: bool = True) -> None:
        start = ts.state
        if start == finish:
            return
        if start == "forgotten":
            return
        if deferred and finish == "processing" and start in ("waiting", "no-worker"):
            self._to_run.add(ts)  # see _transitions
            return
        func = TRANSITIONS.get((start, finish))
        if func is None:
            # Go through 'released' when there is no direct edge.
            if (start, "released") in TRANSITIONS and ("released", finish) in TRANSITIONS:
                self._transition(ts, "released", recs)
                if ts.state == "released":
                    self._transition(ts, finish, recs)
                return
            raise InvalidTransition(f"no transition {start} -> {finish} for {ts.key!r}")
        self.transition_counter += 1
        on = ts.processing_on
        func(self, ts, recs)
        end = ts.state
        on = ts.processing_on or on
        self.transition_log.append((ts.key, start, end, on.address if on is not None else "", self.now))
        if start == "processing-lost":
            start = "processing"
        self._count_move(ts, start, end)

    def _flush_unrunnable(self, recs: Recommendations) -> None:
        if self._pending_unrunnable:
            for t in self._pending_unrunnable:
                # setdefault: a task already headed elsewhere in this event
                # (released because nothing wants it any more) must not be
                # sent to run instead.
                if t.state == "no-worker":
                    recs.setdefault(t, "processing")
            self._pending_unrunnable.clear()

    def _leave_processing(self, ts: TaskState) -> WorkerState | None:
        ws = ts.processing_on
        if ws is not None:
            d = ws.processing.pop(ts, None)
            ws.long_running.discard(ts)
            if d is not None:
                ws.occupancy = max(ws.occupancy - d, 0.0) if ws.processing else 0.0
            ts.processing_on = None
            self.stealing.pop(ts, None)
            if len(ws.processing) < ws.nthreads:
                self._idle_candidates.add(ws)
            if self.queued:
                self._to_fill.add(ws)
            if self._release_resources(ts, ws):
                for t in sorted(self.unrunnable, key=lambda t: t.priority):
                    if self._fits(t, ws):
                        self._pending_unrunnable.add(t)
        return ws

    def _became_memory(self, ts: TaskState, recs: Recommendations) -> None:
        for dts in ts.dependents:
            dts.waiting_on.discard(ts)
            # A dependent whose own result arrived in the same event is
            # already headed for memory: running it would be wrong.
            if not dts.waiting_on and dts.state == "waiting" and recs.get(dts) != "memory":
                recs[dts] = "processing"
        for dts in ts.dependencies:
            self._drop_waiter(dts, ts, recs)
        if self.fire_and_forget.wants_what:
            self._fire_and_forget_done(ts)
        for cs in ts.who_wants:
            self._out.append(ToClient(cs.client_id, _key_in_memory(ts)))
        if not ts.who_wants and not ts.waiters:
            recs[ts] = "released"

    def _drop_waiter(self, dts: TaskState, ts: TaskState, recs: Recommendations) -> None:
        """``ts`` no longer needs its dependency ``dts``.

        Once nothing waits for ``dts`` and no client wants it, it is released
        whatever its state: a dependency still waiting, unrunnable or running
        is as unwanted as one in memory, and left alone it would stay in that
        state for ever (after its dependents are gone, nothing revisits it).

        The check is made by :meth:`_transitions` once the event's other
        transitions are done: ``ts`` is often on its way back to 'waiting'
        (a retry, a lost worker) and will wait for ``dts`` again, and a
        dependency released in between would be taken from its worker and
        sent out again, or its data dropped and recomputed.
        """
        dts.waiters.discard(ts)
        if not dts.waiters:
            self._maybe_unwanted.add(dts)

    def _to_released(self, ts: TaskState, recs: Recommendations) -> None:
        for dts in ts.dependencies:
            self._drop_waiter(dts, ts, recs)
        ts.waiting_on = NO_TASKS
        ts.state = "released"
        if ts.who_wants or ts.waiters:
            recs[ts] = "waiting"
        elif not ts.dependents:
            recs[ts] = "forgotten"

    def _to_erred(self, ts: TaskState, recs: Recommendations) -> None:
        for dts in ts.dependencies:
            self._drop_waiter(dts, ts, recs)
        ts.waiting_on = NO_TASKS
        for ws in list(ts.who_has):
            self._remove_replica(ts, ws)
            self._out.append(ToWorker(ws.address, FreeKeys(keys=[ts.key])))
        ts.state = "erred"
        if self.fire_and_forget.wants_what:
            self._fire_and_forget_done(ts)
        blame = ts.exception_blame or ts
        for dts in ts.dependents:
            if dts.state in ("waiting", "no-worker", "processing", "released") and (dts.who_wants or dts.waiters or dts.state != "released"):
                dts.exception_blame = blame
                recs[dts] = "erred"
        self._report_erred(ts, ts.who_wants)
        if not ts.who_wants and not ts.waiters and not ts.dependents:
            recs[ts] = "forgotten"

    def _t_released_waiting(self, ts: TaskState, recs: Recommendations) -> None:
        if not ts.runnable:
            raise InvalidTransition(f"{ts.key!r} has no run spec and cannot be computed")
        ts.state = "waiting"
        ts.waiting_on = NO_TASKS
        # First see whether the task is bound to fail: then it fails without
        # starting any of its other dependencies (which would be sent to the
        # workers only to be taken back when this task errs).
        for dts in ts.dependencies:
            # An erred dependency already on its way to 'released' in this
            # event is about to run again (its own dependency got data back):
            # wait for it rather than fail with its stale, cleared error.
            if dts.state == "erred" and recs.get(dts) != "released":
                ts.exception_blame = dts.exception_blame or dts
                recs[ts] = "erred"
                return
            if dts.state == "released" and not dts.who_has and not dts.runnable:
                self._set_exception(ts, LostData(f"dependency {dts.key!r} was scattered data that has been lost"))
                recs[ts] = "erred"
                return
        for dts in ts.dependencies:
            _add(dts, "waiters", ts)
            if not dts.who_has:
                _add(ts, "waiting_on", dts)
                if dts.state == "released":
                    recs[dts] = "waiting"
        if not ts.waiting_on and ts not in recs:
            recs[ts] = "processing"

    def _t_waiting_processing(self, ts: TaskState, recs: Recommendations) -> None:
        ws = self.decide_worker(ts)
        if ws is None:
            ts.state = "no-worker"
            self.unrunnable.add(ts)
            return
        if self._is_root(ts) and (self.queued or self._saturated(ws)):
            # Keep submission order: once anything is queued, new root tasks
            # queue behind it instead of overtaking.
            self._enqueue(ts)
            return
        self._send_to_worker(ts, ws)

    def _t_queued_released(self, ts: TaskState, recs: Recommendations) -> None:
        self._dequeue(ts)
        self._to_released(ts, recs)

    def _t_noworker_processing(self, ts: TaskState, recs: Recommendations) -> None:
        ws = self.decide_worker(ts)
        if ws is None:
            return
        self.unrunnable.discard(ts)
        self._send_to_worker(ts, ws)

    def _t_processing_memory(self, ts: TaskState, recs: Recommendations) -> None:
        self._leave_processing(ts)
        ts.state = "memory"
        ts.exception_blame = None
        ts.suspicious = 0
        ts.died_on = ()
        self._became_memory(ts, recs)

    def _t_waiting_memory(self, ts: TaskState, recs: Recommendations) -> None:
        # A result arrived for a task we were (re)waiting on: accept it.
        if not ts.who_has:
            raise InvalidTransition(f"{ts.key!r} cannot be in memory with no holder")
        for dts in ts.waiting_on:
            dts.waiters.discard(ts)
        ts.waiting_on = NO_TASKS
        self.unrunnable.discard(ts)
        ts.state = "memory"
        self._became_memory(ts, recs)

    def _t_released_memory(self, ts: TaskState, recs: Recommendations) -> None:
        if not ts.who_has:
            raise InvalidTransition(f"{ts.key!r} cannot be in memory with no holder")
        ts.state = "memory"
        self._became_memory(ts, recs)

    def _t_memory_released(self, ts: TaskState, recs: Recommendations) -> None:
        if ts.who_has and (ts.who_wants or ts.waiters):
            # A stale recommendation: the task was unwanted when it was made,
            # but a later transition in the same event made a task wait for
            # it again.  Lost data arrives here with no holders left, so
            # keeping held, needed data is always right: dropping it would
            # only make us compute it again.
            return
        for ws in list(ts.who_has):
            self._remove_replica(ts, ws)
            self._out.append(ToWorker(ws.address, FreeKeys(keys=[ts.key])))
        ts.state = "released"
        # Dependents that still need this result must wait for it again.
        for dts in ts.dependents:
            if dts.state in ("waiting", "no-worker"):
                _add(dts, "waiting_on", ts)
                if dts.state == "no-worker":
                    self.unrunnable.discard(dts)
                    dts.state = "waiting"
                    # Not a table transition, so count it here.
                    self._count_move(dts, "no-worker", "waiting")
            elif dts.state == "processing":
                recs[dts] = "released"
        if ts.who_wants or ts.waiters:
            if ts.runnable:
                recs[ts] = "waiting"
            else:
                self._set_exception(ts, LostData(f"scattered data {ts.key!r} was lost"))
                recs[ts] = "erred"
        elif not ts.dependents:
            recs[ts] = "forgotten"

    def _t_processing_released(self, ts: TaskState, recs: Recommendations) -> None:
        ws = self._leave_processing(ts)
        if ws is not None and ts.state == "processing":
            self._out.append(ToWorker(ws.address, FreeKeys(keys=[ts.key])))
        self._to_released(ts, recs)

    def _t_waiting_released(self, ts: TaskState, recs: Recommendations) -> None:
        self._to_released(ts, recs)

    def _t_noworker_released(self, ts: TaskState, recs: Recommendations) -> None:
        self.unrunnable.discard(ts)
        self._to_released(ts, recs)

    def _t_processing_erred(self, ts: TaskState, recs: Recommendations) -> None:
        ws = self._leave_processing(ts)
        if ws is not None and ws.address in self.workers:
            # The scheduler keeps the exception; the worker can forget the task.
            self._out.append(ToWorker(ws.address, FreeKeys(keys=[ts.key])))
        self._to_erred(ts, recs)

    def _t_waiting_erred(self, ts: TaskState, recs: Recommendations) -> None:
        self._to_erred(ts, recs)

    def _t_noworker_erred(self, ts: TaskState, recs: Recommendations) -> None:
        self.unrunnable.discard(ts)
        self._to_erred(ts, recs)

    def _t_released_erred(self, ts: TaskState, recs: Recommendations) -> None:
        self._to_erred(ts, recs)

    def _t_memory_erred(self, ts: TaskState, recs: Recommendations) -> None:
        self._to_erred(ts, recs)

    def _t_erred_released(self, ts: TaskState, recs: Recommendations) -> None:
        root = ts.exception_blame or ts
        ts.exception = None
        ts.exception_text = ts.traceback_text = ts.type_name = ""
        ts.exception_blame = None
        ts.state = "released"
        for dts in ts.dependents:
            # Dependents that failed for the same cause go too, wanted or not:
            # an unwanted one between this task and a wanted one would stay
            # erred and fail the wanted one again, blaming an error that has
            # just been cleared.
            if dts.state == "erred" and (dts.who_wants or dts.waiters or dts.exception_blame is root):
                recs[dts] = "released"
        if ts.who_wants or ts.waiters:
            if ts.runnable:
                recs[ts] = "waiting"
        elif not ts.dependents:
            recs[ts] = "forgotten"

    def _t_to_forgotten(self, ts: TaskState, recs: Recommendations) -> None:
        if ts.who_wants or ts.waiters or ts.dependents:
            raise InvalidTransition(f"{ts.key!r} is still needed and cannot be forgotten")
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
            dts.waiters.discard(ts)
            if not dts.dependents and not dts.who_wants and not dts.waiters and dts.state in ("released", "erred"):
                recs[dts] = "forgotten"
        ts.dependencies = NO_TASKS
        self.unrunnable.discard(ts)
        ts.state = "forgotten"
        del self.tasks[ts.key]

    def _cancel(self, keys: list[str]) -> None:
        """Drop every client's claim on ``keys`` and on what depends on them
        (telling each client), and release what is then unwanted."""
        orders: list[list[TaskState]] = []
        seen: set[TaskState] = set()
        for key in keys:
            ts = self.tasks.get(key)
            if ts is None:
                continue
            # Cancelling drops every client's claim on it and on what depends
            # on it.  The walk lists dependents before their dependencies so
            # that they are released first: releasing a dependency while a
            # dependent still waits for it would only send it to run again.
            order: list[TaskState] = []
            stack: list[tuple[TaskState, bool]] = [(ts, False)]
            while stack:
                t, finished = stack.pop()
                if finished:
                    order.append(t)
                    continue
                if t in seen:
                    continue
                seen.add(t)
                for c in list(t.who_wants):
                    t.who_wants.discard(c)
                    c.wants_what.discard(t)
                    if c is not self.fire_and_forget:
                        self._out.append(ToClient(c.client_id, KeyCancelled(key=t.key, reason="cancelled")))
                stack.append((t, True))
                if t.state not in ("memory",):
                    stack.extend((d, False) for d in t.dependents if d not in seen)
            orders.append(order)
        # One cascade for all the keys, so that nothing a later key releases
        # gets started in between.  _transitions pops the most recent
        # recommendation first: queue dependencies first so dependents go
        # first.  A result still needed outside the cancelled set stays
        # (_maybe_release checks the waiters).
        recs: Recommendations = {}
        for order in reversed(orders):
            for t in reversed(order):
                self._maybe_release(t, recs)
        self._transitions(recs)
        for ts in list(self.tasks.values()):
            if ts.state == "released" and not ts.who_wants and not ts.waiters and not ts.dependents:
                recs[ts] = "forgotten"
        self._transitions(recs)


T = TransitionsLayer
#: (start, finish) -> the function that makes that move.
TRANSITIONS: dict[tuple[TaskStateName | TransientStateName, TaskStateName], Callable[[Any, TaskState, Recommendations], None]] = {
    ("released", "waiting"): T._t_released_waiting,
    ("released", "memory"): T._t_released_memory,
    ("released", "erred"): T._t_released_erred,
    ("released", "forgotten"): T._t_to_forgotten,
    ("waiting", "processing"): T._t_waiting_processing,
    ("waiting", "released"): T._t_waiting_released,
    ("waiting", "memory"): T._t_waiting_memory,
    ("waiting", "erred"): T._t_waiting_erred,
    ("no-worker", "processing"): T._t_noworker_processing,
    ("queued", "released"): T._t_queued_released,
    ("no-worker", "released"): T._t_noworker_released,
    ("no-worker", "memory"): T._t_waiting_memory,
    ("no-worker", "erred"): T._t_noworker_erred,
    ("processing", "memory"): T._t_processing_memory,
    ("processing", "released"): T._t_processing_released,
    ("processing", "erred"): T._t_processing_erred,
    # A retry: release (which sends the task back to waiting while it is
    # wanted).
    ("processing", "waiting"): T._t_processing_released,
    ("processing-lost", "released"): T._t_processing_released,
    ("processing-lost", "erred"): T._t_processing_erred,
    ("memory", "released"): T._t_memory_released,
    ("memory", "erred"): T._t_memory_erred,
    ("erred", "released"): T._t_erred_released,
    ("erred", "forgotten"): T._t_to_forgotten,
}
del T
