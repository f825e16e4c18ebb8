"""The state machine itself: :class:`SchedulerState` and its event handlers.

:meth:`SchedulerState.handle` looks the event's handler up in a table by
type, runs it at the given time, lets idle workers steal, and returns the
instructions the handler and the transitions it caused produced.  A handler
checks its event before it changes anything: a bad one raises
:class:`~.exceptions.InvalidEvent` and leaves the state (clock included) as
it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...protocol.messages import FreeKeys, TaskSpec
from .core import _key_in_memory
from .entities import (
    NO_RESOURCES,
    NO_WORKERS,
    Recommendations,
    TaskState,
    _add,
    pack_priority,
)
from .events import (
    AddClientEvent,
    AddKeysEvent,
    AddWorkerEvent,
    CancelKeysEvent,
    Event,
    FireAndForgetEvent,
    HeartbeatEvent,
    Instruction,
    LongRunningEvent,
    MissingDataEvent,
    NannyRestartedEvent,
    ReleaseKeysEvent,
    ReleaseWorkerDataEvent,
    RemoveClientEvent,
    RemoveWorkerEvent,
    RescheduleEvent,
    RestartEvent,
    RetireWorkersEvent,
    StealResponseEvent,
    TaskErredEvent,
    TaskFinishedEvent,
    TickEvent,
    ToClient,
    ToWorker,
    UpdateDataEvent,
    UpdateGraphEvent,
)
from .exceptions import InvalidEvent, LostData
from .membership import MembershipLayer


class SchedulerState(MembershipLayer):
    """The scheduler's state machine (see the package docstring)."""

    def handle(self, event: Event, now: float) -> list[Instruction]:
        """Apply ``event`` at time ``now``; return the messages to send.

        Raises:
            InvalidEvent: the event does not fit the state; nothing changed.
        """
        method = self._handlers[type(event)]
        # The clock is part of the state too: a rejected event must not move it.
        before, self.now = self.now, now
        try:
            method(self, event)
        except InvalidEvent:
            self.now = before
            raise
        if self.retirements or self.restarts:
            self._progress_requests()
        if self._idle_candidates:
            self._steal_for_idle()
        out, self._out = self._out, []
        if self.validate_after_each:
            self.validate()
        return out

    def handle_many(self, events: Iterable[Event], now: float) -> list[Instruction]:
        out: list[Instruction] = []
        for ev in events:
            out.extend(self.handle(ev, now))
        return out

    def _update_graph(self, ev: UpdateGraphEvent) -> None:
        cs = self._client(ev.client)
        new_keys: dict[str, TaskSpec] = {}
        for spec in ev.tasks:
            if spec.key in new_keys:
                raise InvalidEvent(f"task {spec.key!r} appears twice in the graph")
            if spec.retries < 0:
                raise InvalidEvent(f"task {spec.key!r}: retries must not be negative")
            for k, v in spec.resources.items():
                if v < 0:
                    raise InvalidEvent(f"task {spec.key!r}: resource {k!r} must not be negative")
            new_keys[spec.key] = spec
        for spec in ev.tasks:
            for dep in spec.dependencies:
                if dep not in new_keys and dep not in self.tasks:
                    raise InvalidEvent(f"task {spec.key!r} depends on unknown key {dep!r}")
                if dep == spec.key:
                    raise InvalidEvent(f"task {spec.key!r} depends on itself")
        for key in ev.keys:
            if key not in new_keys and key not in self.tasks:
                raise InvalidEvent(f"the graph wants unknown key {key!r}")
        _check_acyclic(new_keys)
        self._check_no_cycle_through_replaced(new_keys)

        self.generation += 1
        gen = self.generation
        touched: list[TaskState] = []
        # A map's tasks share one function, but each spec arrives with its own
        # copy of the bytes: keep one per graph (~90 bytes less per held task).
        # Only small ones: hashing a 1 MB closure per task would cost more.
        functions: dict[bytes, bytes] = {}

        def shared(fn: bytes) -> bytes:
            return functions.setdefault(fn, fn) if len(fn) <= 4096 else fn
        for order, spec in enumerate(ev.tasks):
            ts = self.tasks.get(spec.key)
            if ts is None:
                ts = TaskState(spec.key, shared(spec.function), spec.args)
                self.tasks[spec.key] = ts
                self.task_counts["released"] += 1
                self._prefix_count(ts.prefix, "released", 1)
            elif ts.state in ("released", "erred") and not ts.runnable:
                ts.function, ts.args = shared(spec.function), spec.args
            else:
                continue  # already known: keep the running/held one
            ts.priority = pack_priority(spec.priority, gen, order)
            ts.retries = spec.retries
            # Shared empties: an empty frozenset or dict per task costs 216 or 64 bytes.
            ts.workers = frozenset(spec.workers) if spec.workers else NO_WORKERS
            ts.allow_other_workers = spec.allow_other_workers
            ts.resources = dict(spec.resources) if spec.resources else NO_RESOURCES
            touched.append(ts)
        for ts in touched:
            spec = new_keys[ts.key]
            for dep_key in spec.dependencies:
                dts = self.tasks[dep_key]
                _add(ts, "dependencies", dts)
                _add(dts, "dependents", ts)

        recs: Recommendations = {}
        for key in ev.keys:
            ts = self.tasks[key]
            if cs not in ts.who_wants:
                ts.who_wants.add(cs)
                cs.wants_what.add(ts)
            if ts.state == "memory":
                self._out.append(ToClient(cs.client_id, _key_in_memory(ts)))
            elif ts.state == "erred":
                self._report_erred(ts, [cs])
            elif ts.state == "released" and ts.runnable:
                recs[ts] = "waiting"
            elif ts.state == "released":
                # Scattered data that was dropped (kept only as a dependency
                # in a lineage) cannot be made again.  Asking for 'waiting'
                # raised InvalidTransition out of handle().
                self._set_exception(ts, LostData(f"scattered data {ts.key!r} was released and cannot be recomputed"))
                recs[ts] = "erred"
        # Tasks sent along that nothing wants or depends on would otherwise
        # sit in 'released' for ever (a leak): forget them now, which in turn
        # forgets their unwanted dependencies.
        for ts in touched:
            if ts not in recs and ts.state == "released" and not ts.who_wants and not ts.waiters and not ts.dependents:
                recs[ts] = "forgotten"
        self._transitions(recs)

    def _check_no_cycle_through_replaced(self, specs: dict[str, TaskSpec]) -> None:
        """Raise InvalidEvent if a new run spec for known data closes a cycle.

        Data with no run spec (scattered) that is released or erred takes
        the spec sent for it, dependencies included.  Existing tasks may
        depend on it, so those dependencies can close a cycle through the
        known graph that :func:`_check_acyclic` (new keys only) cannot see.
        """
        replaced = [
            k for k in specs if (ts := self.tasks.get(k)) is not None and ts.state in ("released", "erred") and not ts.runnable
        ]
        for root in replaced:
            stack = list(specs[root].dependencies)
            seen: set[str] = set()
            while stack:
                key = stack.pop()
                if key == root:
                    raise InvalidEvent(f"the graph has a cycle through {root!r}")
                if key in seen:
                    continue
                seen.add(key)
                ts = self.tasks.get(key)
                if ts is None or key in replaced:
                    stack.extend(specs[key].dependencies)
                    if ts is not None:
                        stack.extend(d.key for d in ts.dependencies)
                else:
                    stack.extend(d.key for d in ts.dependencies)

    def _release_keys(self, ev: ReleaseKeysEvent) -> None:
        cs = self.clients.get(ev.client)
        if cs is None:
            return
        recs: Recommendations = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None or cs not in ts.who_wants:
                continue
            ts.who_wants.discard(cs)
            cs.wants_what.discard(ts)
            self._maybe_release(ts, recs)
        self._transitions(recs)

    def _cancel_keys(self, ev: CancelKeysEvent) -> None:
        if ev.client in self.clients:
            self._cancel(ev.keys)

    def _update_data(self, ev: UpdateDataEvent) -> None:
        cs = self._client(ev.client)
        for key, addrs in ev.who_has.items():
            if not addrs:
                raise InvalidEvent(f"scattered key {key!r} has no workers")
            for a in addrs:
                if a not in self.workers:
                    raise InvalidEvent(f"scattered key {key!r} names unknown worker {a}")
            if key not in ev.nbytes:
                raise InvalidEvent(f"scattered key {key!r} has no size")
        for key, n in ev.nbytes.items():
            if n < 0:
                raise InvalidEvent(f"scattered key {key!r} has negative size {n}")
        recs: Recommendations = {}
        for key, addrs in ev.who_has.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = TaskState(key, None, None)
                self.tasks[key] = ts
                self.task_counts["released"] += 1
                self._prefix_count(ts.prefix, "released", 1)
            for a in addrs:
                self._add_replica(ts, self.workers[a], ev.nbytes[key])
            if cs not in ts.who_wants:
                ts.who_wants.add(cs)
                cs.wants_what.add(ts)
            if ts.state != "memory":
                recs[ts] = "memory"
            else:
                self._out.append(ToClient(cs.client_id, _key_in_memory(ts)))
        self._transitions(recs)

    def _task_finished(self, ev: TaskFinishedEvent) -> None:
        ws = self.workers.get(ev.worker)
        ts = self.tasks.get(ev.key)
        if ev.nbytes < 0:
            raise InvalidEvent(f"task {ev.key!r} reported with negative size {ev.nbytes}")
        if ws is None:
            raise InvalidEvent(f"task report from unknown worker {ev.worker}")
        if ts is None or ts.state not in ("processing", "memory") or (ts.state == "processing" and ts.processing_on is not ws):
            # Stale report (cancelled, or moved): the worker should drop it
            # unless the scheduler now wants it from there.
            if ts is not None and ts.state in ("waiting", "no-worker", "released") and (ts.who_wants or ts.waiters) and ts.runnable and all(d.who_has for d in ts.dependencies):
                self._add_replica(ts, ws, ev.nbytes)
                ts.result_type = ev.type_name
                self._transitions({ts: "memory"})
            elif ts is not None and ts.state == "processing" and ts.processing_on is not None:
                # Done elsewhere first: accept this copy, cancel the other run.
                self._add_replica(ts, ws, ev.nbytes)
                ts.result_type = ev.type_name
                self._transitions({ts: "memory"})
            else:
                self._out.append(ToWorker(ws.address, FreeKeys(keys=[ev.key])))
            return
        if ts.state == "memory":
            self._add_replica(ts, ws, ev.nbytes)
            return
        if ev.stop > ev.start > 0:
            self._update_duration(ts.prefix, ev.stop - ev.start)
        ts.result_type = ev.type_name
        self._add_replica(ts, ws, ev.nbytes)
        self._transitions({ts: "memory"})

    def _task_erred(self, ev: TaskErredEvent) -> None:
        ws = self.workers.get(ev.worker)
        ts = self.tasks.get(ev.key)
        if ws is None:
            raise InvalidEvent(f"task report from unknown worker {ev.worker}")
        if ts is None or ts.state != "processing" or ts.processing_on is not ws:
            return  # stale
        if ts.retries > 0:
            ts.retries -= 1
            self._transitions({ts: "waiting"})
            return
        ts.exception = ev.exception
        ts.exception_text = ev.exception_text
        ts.traceback_text = ev.traceback_text
        ts.type_name = ev.type_name
        ts.erred_by = ws.address
        self._transitions({ts: "erred"})

    def _add_keys(self, ev: AddKeysEvent) -> None:
        ws = self.workers.get(ev.worker)
        if ws is None:
            raise InvalidEvent(f"add-keys from unknown worker {ev.worker}")
        for k, n in ev.nbytes.items():
            if n < 0:
                raise InvalidEvent(f"add-keys: negative size for {k!r}")
        forget = []
        recs: Recommendations = {}
        for key, n in ev.nbytes.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state == "memory":
                self._add_replica(ts, ws, n)
            elif ts is not None and ts.state in ("processing", "waiting", "no-worker"):
                # Wanted and not computed yet, but a copy exists: take it.
                # Telling the worker to free it instead would also cancel the
                # run of that key the worker may have been sent meanwhile,
                # and the task would then be 'processing' for ever.
                self._add_replica(ts, ws, n)
                recs[ts] = "memory"
            else:
                forget.append(key)
        if forget:
            self._out.append(ToWorker(ws.address, FreeKeys(keys=forget)))
        self._transitions(recs)

    def _release_worker_data(self, ev: ReleaseWorkerDataEvent) -> None:
        ws = self.workers.get(ev.worker)
        if ws is None:
            return
        recs: Recommendations = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None or ws not in ts.who_has:
                continue
            self._remove_replica(ts, ws)
            if not ts.who_has and ts.state == "memory":
                recs[ts] = "released"
        self._transitions(recs)

    def _missing_data(self, ev: MissingDataEvent) -> None:
        ts = self.tasks.get(ev.key)
        errant = self.workers.get(ev.errant_worker)
        if ts is None or errant is None:
            return
        if errant in ts.who_has:
            self._remove_replica(ts, errant)
            if not ts.who_has and ts.state == "memory":
                self._transitions({ts: "released"})

    def _reschedule(self, ev: RescheduleEvent) -> None:
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ts is None or ws is None or ts.state != "processing" or ts.processing_on is not ws:
            return
        self._transitions({ts: "released"})

    def _long_running(self, ev: LongRunningEvent) -> None:
        ts = self.tasks.get(ev.key)
        ws = self.workers.get(ev.worker)
        if ts is None or ws is None or ts.state != "processing" or ts.processing_on is not ws:
            return
        ws.long_running.add(ts)
        # Its expected duration no longer holds the worker's queue back.
        d = ws.processing.get(ts, 0.0)
        ws.processing[ts] = 0.0
        ws.occupancy = max(ws.occupancy - d, 0.0)
        if self.queued:
            self._to_fill.add(ws)
            self._transitions({})

    _handlers: dict[type, Any] = {}


def _check_acyclic(specs: dict[str, TaskSpec]) -> None:
    """Raise InvalidEvent if the new tasks contain a dependency cycle."""
    state: dict[str, int] = {}
    for root in specs:
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            key, i = stack.pop()
            deps = [d for d in specs[key].dependencies if d in specs]
            if i == 0:
                if state.get(key) == 2:
                    continue
                state[key] = 1
            if i < len(deps):
                stack.append((key, i + 1))
                d = deps[i]
                s = state.get(d)
                if s == 1:
                    raise InvalidEvent(f"the graph has a cycle through {d!r}")
                if s is None:
                    stack.append((d, 0))
            else:
                state[key] = 2


SchedulerState._handlers = {
    AddWorkerEvent: SchedulerState._add_worker,
    RemoveWorkerEvent: SchedulerState._remove_worker,
    AddClientEvent: SchedulerState._add_client,
    RemoveClientEvent: SchedulerState._remove_client,
    UpdateGraphEvent: SchedulerState._update_graph,
    TaskFinishedEvent: SchedulerState._task_finished,
    TaskErredEvent: SchedulerState._task_erred,
    ReleaseKeysEvent: SchedulerState._release_keys,
    CancelKeysEvent: SchedulerState._cancel_keys,
    UpdateDataEvent: SchedulerState._update_data,
    AddKeysEvent: SchedulerState._add_keys,
    MissingDataEvent: SchedulerState._missing_data,
    ReleaseWorkerDataEvent: SchedulerState._release_worker_data,
    HeartbeatEvent: SchedulerState._heartbeat,
    RescheduleEvent: SchedulerState._reschedule,
    LongRunningEvent: SchedulerState._long_running,
    StealResponseEvent: SchedulerState._steal_response,
    TickEvent: SchedulerState._tick,
    FireAndForgetEvent: SchedulerState._fire_and_forget_keys,
    RetireWorkersEvent: SchedulerState._retire_workers,
    RestartEvent: SchedulerState._restart,
    NannyRestartedEvent: SchedulerState._nanny_restarted,
}
