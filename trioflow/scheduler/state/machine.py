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

from ...protocol.messages import FreeKeys, KeyCancelled, TaskSpec
from .core import _key_in_memory
from .entities import (
    NO_RESOURCES,
    NO_WORKERS,
    ClientState,
    TaskState,
    WorkerState,
    _add,
    pack_priority,
)
from .events import (
    AddClientEvent,
    AddKeysEvent,
    AddWorkerEvent,
    CancelKeysEvent,
    Event,
    HeartbeatEvent,
    Instruction,
    MissingDataEvent,
    ReleaseKeysEvent,
    ReleaseWorkerDataEvent,
    RemoveClientEvent,
    RemoveWorkerEvent,
    RescheduleEvent,
    StealResponseEvent,
    TaskErredEvent,
    TaskFinishedEvent,
    ToClient,
    ToWorker,
    UpdateDataEvent,
    UpdateGraphEvent,
)
from .exceptions import InvalidEvent, KilledWorker, LostData
from .validation import ValidationLayer


class SchedulerState(ValidationLayer):
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

    def _add_worker(self, ev: AddWorkerEvent) -> None:
        if ev.address in self.workers:
            raise InvalidEvent(f"worker {ev.address} is already registered")
        if ev.name in self.names:
            raise InvalidEvent(f"a worker named {ev.name!r} is already registered ({self.names[ev.name]})")
        if ev.nthreads < 1:
            raise InvalidEvent(f"worker {ev.address}: nthreads must be at least 1, got {ev.nthreads}")
        if ev.memory_limit < 0:
            raise InvalidEvent(f"worker {ev.address}: memory_limit must not be negative")
        for k, v in ev.resources.items():
            if v < 0:
                raise InvalidEvent(f"worker {ev.address}: resource {k!r} must not be negative")
        for k, v in ev.nbytes.items():
            if v < 0:
                raise InvalidEvent(f"worker {ev.address}: negative size for key {k!r}")
        ws = WorkerState(ev.address, ev.name, ev.nthreads, ev.memory_limit, ev.resources)
        ws.nanny = ev.nanny
        ws.pid = ev.pid
        ws.local_directory = ev.local_directory
        ws.services = dict(ev.services)
        ws.last_seen = self.now
        self.workers[ev.address] = ws
        self._worker_list = None
        self.names[ev.name] = ev.address
        recs: dict[TaskState, str] = {}
        forget: list[str] = []
        for key, nbytes in ev.nbytes.items():
            ts = self.tasks.get(key)
            if ts is not None and ts.state in ("memory", "waiting", "no-worker", "released") and (ts.who_wants or ts.waiters):
                self._add_replica(ts, ws, nbytes)
                if ts.state != "memory":
                    recs[ts] = "memory"
            else:
                forget.append(key)
        if forget:
            self._out.append(ToWorker(ws.address, FreeKeys(keys=forget)))
        # Take in the data first: a task waiting to run may not be needed
        # any more once a dependent's result is in memory.
        self._transitions(recs)
        for ts in sorted(self.unrunnable, key=lambda t: t.priority):
            if ts.state == "no-worker" and self._valid_workers_now(ts, [ws]):
                recs[ts] = "processing"
        self._to_fill.add(ws)
        self._idle_candidates.add(ws)
        self._transitions(recs)

    def _remove_worker(self, ev: RemoveWorkerEvent) -> None:
        ws = self.workers.get(ev.address)
        if ws is None:
            return  # already gone; removal is idempotent
        del self.workers[ws.address]
        self._worker_list = None
        self._to_fill.discard(ws)
        self._idle_candidates.discard(ws)
        if self.names.get(ws.name) == ws.address:
            del self.names[ws.name]
        recs: dict[TaskState, str] = {}
        for ts in list(ws.processing):
            if not ev.safe:
                ts.suspicious += 1
                ts.died_on += (ws.address,)
            ts.processing_on = None
            # _leave_processing will not see this task (no processing_on
            # any more): forget its steal here, or a KilledWorker leaves a
            # stale entry for an erred task.
            self.stealing.pop(ts, None)
            self._release_resources(ts, ws)
            if ts.suspicious > self.allowed_failures:
                self._set_exception(
                    ts,
                    KilledWorker(ts.key, list(ts.died_on), self.allowed_failures),
                    worker=ws.address,
                )
                ts.state = "processing-lost"
                recs[ts] = "erred"
            else:
                ts.state = "processing-lost"
                recs[ts] = "released"
        ws.processing.clear()
        ws.occupancy = 0.0
        for ts in list(ws.has_what):
            ts.who_has.discard(ws)
            if not ts.who_has:
                if ts.runnable:
                    recs[ts] = "released"
                else:
                    self._set_exception(
                        ts,
                        LostData(f"scattered data {ts.key!r} was lost with worker {ws.address} and cannot be recomputed"),
                        worker=ws.address,
                    )
                    recs[ts] = "erred"
        ws.has_what.clear()
        ws.nbytes = 0
        self._transitions(recs)

    def _heartbeat(self, ev: HeartbeatEvent) -> None:
        ws = self.workers.get(ev.worker)
        if ws is None:
            raise InvalidEvent(f"heartbeat from unknown worker {ev.worker}")
        ws.metrics = dict(ev.metrics)
        ws.last_seen = self.now
        paused = bool(ev.metrics.get("paused"))
        if paused and ws.status == "running":
            ws.status = "paused"
        elif not paused and ws.status == "paused":
            ws.status = "running"
            recs = {ts: "processing" for ts in self.unrunnable if ts.state == "no-worker"}
            self._to_fill.add(ws)
            self._transitions(recs)

    def _add_client(self, ev: AddClientEvent) -> None:
        if ev.client in self.clients:
            raise InvalidEvent(f"client {ev.client} is already registered")
        self.clients[ev.client] = ClientState(ev.client)

    def _remove_client(self, ev: RemoveClientEvent) -> None:
        cs = self.clients.pop(ev.client, None)
        if cs is None:
            return
        recs: dict[TaskState, str] = {}
        for ts in cs.wants_what:
            ts.who_wants.discard(cs)
            self._maybe_release(ts, recs)
        cs.wants_what.clear()
        self._transitions(recs)

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

        recs: dict[TaskState, str] = {}
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
        recs: dict[TaskState, str] = {}
        for key in ev.keys:
            ts = self.tasks.get(key)
            if ts is None or cs not in ts.who_wants:
                continue
            ts.who_wants.discard(cs)
            cs.wants_what.discard(ts)
            self._maybe_release(ts, recs)
        self._transitions(recs)

    def _cancel_keys(self, ev: CancelKeysEvent) -> None:
        cs = self.clients.get(ev.client)
        if cs is None:
            return
        orders: list[list[TaskState]] = []
        seen: set[TaskState] = set()
        for key in ev.keys:
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
        recs: dict[TaskState, str] = {}
        for order in reversed(orders):
            for t in reversed(order):
                self._maybe_release(t, recs)
        self._transitions(recs)
        for ts in list(self.tasks.values()):
            if ts.state == "released" and not ts.who_wants and not ts.waiters and not ts.dependents:
                recs[ts] = "forgotten"
        self._transitions(recs)

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
        recs: dict[TaskState, str] = {}
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
        recs: dict[TaskState, str] = {}
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
        recs: dict[TaskState, str] = {}
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
    StealResponseEvent: SchedulerState._steal_response,
}
