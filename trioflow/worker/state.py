"""The worker's state machine: which task runs next, what to fetch, no IO.

Theory of operation
-------------------
:class:`WorkerState` takes events (the scheduler sent a task, an execution
finished, a fetch from a peer came back) through :meth:`WorkerState.handle`
and returns instructions for the shell in :mod:`trioflow.worker.server`:
:class:`Execute` a task, :class:`GatherDep` from a peer, :class:`SendMsg` to
the scheduler, :class:`DropData` from the local store.  It holds keys and
sizes, never the values: the shell owns the data store, the threads and the
sockets.  No trio import, no clock reads.

Task states on a worker:

==========  ============================================================
waiting     sent by the scheduler; some dependencies are not here yet
ready       all dependencies here; queued by priority for a thread (or
            set aside until the resources it needs are released)
executing   handed to the executor
memory      the value is in the local store
error       execution raised; the scheduler has been told
fetch       a dependency to get from a peer (``who_has`` says where)
flight      a dependency being transferred right now (``coming_from``)
==========  ============================================================

Ready tasks start in priority order, but a task whose resources are taken
does not hold up those behind it: it is set aside (``constrained``) until a
task holding resources finishes, and the next task whose needs fit goes.

Data put here directly (scatter) is authoritative.  Put over a key that is
being executed, it is in memory at once; the run goes on (a thread cannot be
stopped) as a *superseded* run that keeps its executor slot and resources
until it returns, and its result is dropped: the shell stores a result only
for a task still 'executing' (:meth:`WorkerState.is_current_run`).  Should
the key be sent here to compute again meanwhile, that run is taken up as the
task's own rather than started a second time.

A copy asked for by the scheduler (:class:`AcquireReplicasEvent`: its only
holder is retiring) is fetched, and announced once here.  The scheduler has
the key in memory elsewhere, so a compute of it here is stale: one not
started yet gives way to the fetch; a run already going on is let finish
and its result reported, and should it fail, the key is fetched after all.

Executor slots: the executor runs ``nthreads`` tasks at once but is handed up
to ``nthreads + prefetch`` of them, so a thread that finishes a task starts
the next one without a round trip through the event loop (a thread hand-off
per task costs more than a small task).  Only tasks whose prefix has been
measured to run shorter than :data:`PREFETCH_BELOW` take a prefetch slot,
only as many as :data:`PREFETCH_HORIZON` of their work, and only while
everything already in the executor is measured short too (a task handed over
cannot be stolen any more, so none may wait behind a long run).  For longer
tasks the round trip is noise, and a task handed over early is committed to
run before whatever arrives meanwhile, such as the dependent that would have
consumed (and let go of) the last result.

A key is dropped when the scheduler says so (:class:`FreeKeysEvent`) and no
local task still needs it.  Transfers are grouped per peer, at most
``max_transfer_bytes`` per request and ``max_concurrent_fetches`` peers at
once.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidWorkerEvent
from ..keys import key_prefix
from ..protocol.messages import (
    AddKeys,
    ComputeTask,
    Message,
    MissingData,
    ReleaseWorkerData,
    Reschedule,
    StealResponse,
    TaskErred,
    TaskFinished,
)
from ..protocol.serialize import Serialized
from ..records import Record, record

__all__ = ["WorkerState", "WorkerTask", "Execute", "GatherDep", "SendMsg", "DropData", "InvalidWorkerEvent"]

WORKER_STATES = ("waiting", "ready", "executing", "memory", "error", "fetch", "flight")
#: Tasks measured shorter than this (seconds, per key prefix) may be handed
#: to the executor ahead of a free thread ...
PREFETCH_BELOW = 0.005
#: ... as many as make this much work per thread (at least one per thread and
#: two in all, at most PREFETCH_MAX per thread): microsecond tasks queue deep,
#: so an executor thread runs a run of them per wake-up (a 20,000-task no-op
#: map: worker CPU per task 50 -> 33 µs).
PREFETCH_HORIZON = 0.002
PREFETCH_MAX = 16


# ---------------------------------------------------------------- instructions


@record
class Execute(Record):
    key: str
    function: bytes
    args: Serialized
    dependencies: tuple[str, ...]


@record
class GatherDep(Record):
    worker: str
    keys: tuple[str, ...]
    nbytes: int


@record
class SendMsg(Record):
    msg: Message


@record
class DropData(Record):
    key: str


# ---------------------------------------------------------------- events


@record(kw_only=True)
class ComputeTaskEvent(Record):
    msg: ComputeTask


@record(kw_only=True)
class FreeKeysEvent(Record):
    keys: list[str]


@record(kw_only=True)
class ExecuteSuccess(Record):
    key: str
    nbytes: int
    type_name: str
    start: float
    stop: float
    thread: int = 0


@record(kw_only=True)
class ExecuteFailure(Record):
    key: str
    exception: Serialized | None
    exception_text: str
    traceback_text: str
    type_name: str
    start: float = 0.0
    stop: float = 0.0
    thread: int = 0


@record(kw_only=True)
class GatherDepDone(Record):
    worker: str
    nbytes: dict[str, int]  # keys received, with sizes
    missing: list[str]  # keys the peer did not have


@record(kw_only=True)
class GatherDepFailed(Record):
    worker: str
    keys: list[str]


@record(kw_only=True)
class DataPut(Record):
    """Values put here directly (scatter); the client tells the scheduler."""

    nbytes: dict[str, int]


@record(kw_only=True)
class PauseEvent(Record):
    paused: bool


@record(kw_only=True)
class StealRequestEvent(Record):
    key: str


@record(kw_only=True)
class AcquireReplicasEvent(Record):
    who_has: dict[str, list[str]]
    nbytes: dict[str, int]


Event = (
    ComputeTaskEvent
    | FreeKeysEvent
    | ExecuteSuccess
    | ExecuteFailure
    | GatherDepDone
    | GatherDepFailed
    | DataPut
    | PauseEvent
    | StealRequestEvent
    | AcquireReplicasEvent
)
Instruction = Execute | GatherDep | SendMsg | DropData


class WorkerTask:
    __slots__ = (
        "key",
        "state",
        "function",
        "args",
        "priority",
        "dependencies",
        "dependents",
        "waiting_for",
        "who_has",
        "coming_from",
        "nbytes",
        "wanted",
        "cancelled",
        "replica",
        "resources",
        "_hash",
        "prefix",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self._hash = hash(key)
        self.prefix = sys.intern(key_prefix(key))  # durations are kept per prefix
        self.state = "new"
        self.function: bytes | None = None
        self.args: Serialized | None = None
        self.priority: tuple[int, int, int] = (0, 0, 0)
        self.dependencies: set[WorkerTask] = set()
        self.dependents: set[WorkerTask] = set()
        self.waiting_for: set[WorkerTask] = set()
        self.who_has: list[str] = []
        self.coming_from = ""
        self.nbytes = 0
        self.wanted = True  # False once the scheduler freed it
        self.cancelled = False  # freed while executing or in flight
        #: Executing, and the scheduler asked for a copy (AcquireReplicas):
        #: if the run gives none, fetch it from ``who_has``.
        self.replica = False
        self.resources: dict[str, float] = {}

    # Hash by key, not id(): set order decides which task becomes ready first
    # (and so runs first), and must not change between runs of the same
    # events.  Equality stays identity.
    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"<WorkerTask {self.key!r} {self.state}>"


class WorkerState:
    def __init__(
        self,
        *,
        address: str,
        nthreads: int,
        resources: dict[str, float] | None = None,
        prefetch: int | None = None,
        max_transfer_bytes: int = 50_000_000,
        max_concurrent_fetches: int = 4,
        validate: bool = False,
    ) -> None:
        self.address = address
        self.nthreads = nthreads
        self.slots = nthreads + (prefetch if prefetch is not None else PREFETCH_MAX * nthreads)
        #: Run time per key prefix (moving average), for prefetching.
        self.durations: dict[str, float] = {}
        self.total_resources = dict(resources or {})
        self.available_resources = dict(self.total_resources)
        self.tasks: dict[str, WorkerTask] = {}
        self.ready: list[tuple[tuple[int, int, int], int, WorkerTask]] = []
        #: Ready tasks whose resources were taken when their turn came: back
        #: into ``ready`` whenever a running task gives resources back.
        self.constrained: list[tuple[tuple[int, int, int], int, WorkerTask]] = []
        self.executing: set[WorkerTask] = set()
        #: Runs whose key was put here (scatter) while they ran: key -> the
        #: resources they hold until their thread returns.  Their results
        #: are dropped.
        self.superseded: dict[str, dict[str, float]] = {}
        self.fetch_by_worker: dict[str, dict[WorkerTask, None]] = {}
        self.in_flight_workers: dict[str, set[WorkerTask]] = {}
        self.max_transfer_bytes = max_transfer_bytes
        self.max_concurrent_fetches = max_concurrent_fetches
        self.paused = False
        self.validate_after_each = validate
        self.nbytes_in_memory = 0
        self._seq = 0
        self._out: list[Instruction] = []
        self._pending_add_keys: dict[str, int] = {}
        self._pending_release: list[str] = []
        self._freeing = False
        self.executed_count = 0

    # ------------------------------------------------------------ entry

    def handle(self, event: Event) -> list[Instruction]:
        """Apply ``event``; return what the shell must do.

        Raises:
            InvalidWorkerEvent: the event does not fit; nothing changed.
        """
        _HANDLERS[type(event)](self, event)
        self._schedule()
        if self._pending_add_keys:
            self._out.append(SendMsg(AddKeys(nbytes=self._pending_add_keys)))
            self._pending_add_keys = {}
        if self._pending_release:
            self._out.append(SendMsg(ReleaseWorkerData(keys=self._pending_release)))
            self._pending_release = []
        out, self._out = self._out, []
        if self.validate_after_each:
            self.validate()
        return out

    def handle_many(self, events: Iterable[Event]) -> list[Instruction]:
        for ev in events:
            _HANDLERS[type(ev)](self, ev)
        self._schedule()
        if self._pending_add_keys:
            self._out.append(SendMsg(AddKeys(nbytes=self._pending_add_keys)))
            self._pending_add_keys = {}
        if self._pending_release:
            self._out.append(SendMsg(ReleaseWorkerData(keys=self._pending_release)))
            self._pending_release = []
        out, self._out = self._out, []
        if self.validate_after_each:
            self.validate()
        return out

    def is_current_run(self, key: str) -> bool:
        """Whether the result of a run of ``key`` that just returned is
        wanted, i.e. the shell must store it before handing the
        ExecuteSuccess over.  Not for a superseded run (its key got a value
        put meanwhile), nor for one this state never started (a new state
        after a reconnect); the event for the former is still due."""
        ts = self.tasks.get(key)
        return ts is not None and ts.state == "executing"

    @property
    def n_executing(self) -> int:
        """Runs holding an executor slot, superseded ones included."""
        return len(self.executing) + len(self.superseded)

    @property
    def n_ready(self) -> int:
        """Tasks waiting for a thread (less some dropped ones not cleared yet)."""
        return len(self.ready) + len(self.constrained)

    @property
    def in_memory(self) -> list[str]:
        return [k for k, t in self.tasks.items() if t.state == "memory"]

    def counts(self) -> dict[str, int]:
        c = dict.fromkeys(WORKER_STATES, 0)
        for t in self.tasks.values():
            c[t.state] = c.get(t.state, 0) + 1
        return c

    # ------------------------------------------------------------ handlers

    def _compute_task(self, ev: ComputeTaskEvent) -> None:
        msg = ev.msg
        for k, n in msg.nbytes.items():
            if n < -1:
                raise InvalidWorkerEvent(f"compute-task {msg.key!r}: negative size for {k!r}")
        ts = self.tasks.get(msg.key)
        if ts is not None:
            if ts.state in ("memory",):
                # Already have it (fetched earlier): report it as done.
                self._out.append(SendMsg(TaskFinished(key=ts.key, nbytes=ts.nbytes, type_name="", start=0.0, stop=0.0)))
                ts.wanted = True
                return
            # Sent to compute: the scheduler expects this run's outcome
            # reported, not a copy fetched instead.
            ts.replica = False
            if ts.state in ("waiting", "ready", "executing") and not ts.cancelled:
                # A duplicate, or wanted again after a free-keys that kept it
                # only as a local dependency: it must be reported this time
                # (left unwanted, it was dropped silently once that
                # dependent went, and the scheduler waited for ever).
                ts.wanted = True
                return
            if ts.state == "executing" and ts.cancelled:
                ts.cancelled = False
                ts.wanted = True
                return
            if ts.state in ("fetch", "flight"):
                # The scheduler now wants us to compute it rather than fetch it.
                self._forget_fetch(ts)
            if ts.state == "error":
                self._drop(ts)
                ts = None
        held = self.superseded.pop(msg.key, None)
        if held is not None:
            # A run of this key still goes on here, superseded by a value
            # put meanwhile (freed since): it becomes this task's run, with
            # the resources it holds.  Starting a second run of the same key
            # would leave two results that the shell cannot tell apart.
            if ts is None:
                ts = self.tasks[msg.key] = WorkerTask(msg.key)
            ts.function = msg.function
            ts.args = msg.args
            ts.priority = msg.priority
            ts.resources = held
            ts.wanted = True
            ts.cancelled = False
            ts.waiting_for.clear()
            ts.state = "executing"
            self.executing.add(ts)
            return
        if ts is None:
            ts = self.tasks[msg.key] = WorkerTask(msg.key)
        ts.function = msg.function
        ts.args = msg.args
        ts.priority = msg.priority
        ts.resources = dict(msg.resources)
        ts.wanted = True
        ts.cancelled = False
        ts.waiting_for.clear()
        to_fetch: list[WorkerTask] = []
        for dep_key, holders in msg.who_has.items():
            dts = self.tasks.get(dep_key)
            if dts is None:
                dts = self.tasks[dep_key] = WorkerTask(dep_key)
                dts.wanted = False  # only needed locally, as a dependency
                dts.nbytes = max(msg.nbytes.get(dep_key, 0), 0)
                dts.state = "fetch"
            ts.dependencies.add(dts)
            dts.dependents.add(ts)
            if dts.state != "memory":
                ts.waiting_for.add(dts)
                if dts.state in ("fetch", "flight", "waiting", "ready", "executing"):
                    # Also for a dependency computed here: should that run
                    # fail, the key is fetched from where the scheduler says.
                    for w in holders:
                        if w not in dts.who_has and w != self.address:
                            dts.who_has.append(w)
                    if dts.state == "fetch":
                        to_fetch.append(dts)
                elif dts.state == "error":
                    # A stale failure of ours: fetch it from where the scheduler says.
                    dts.state = "fetch"
                    dts.who_has = [w for w in holders if w != self.address]
                    to_fetch.append(dts)
        if ts.waiting_for:
            ts.state = "waiting"
        else:
            self._make_ready(ts)
        # Queue the fetches only now that the task is 'waiting': a dependency
        # with no holder but us (the scheduler thinks we still have it) makes
        # _missing reschedule its waiting dependents.  Queued from inside the
        # loop, the task was not waiting yet, so it lost the dependency
        # instead and ran without it.
        for dts in to_fetch:
            if dts.state == "fetch" and self.tasks.get(dts.key) is dts:
                self._queue_fetch(dts)

    def _free_keys(self, ev: FreeKeysEvent) -> None:
        self._freeing = True
        try:
            for key in ev.keys:
                ts = self.tasks.get(key)
                if ts is None:
                    continue
                ts.wanted = False
                ts.replica = False
                self._maybe_drop(ts)
        finally:
            self._freeing = False

    def _execute_success(self, ev: ExecuteSuccess) -> None:
        if self._superseded_returned(ev.key):
            return
        ts = self.tasks.get(ev.key)
        if ts is None or ts.state != "executing":
            raise InvalidWorkerEvent(f"execution result for {ev.key!r}, which is not executing")
        self._leave_executing(ts)
        self._measured(ts.prefix, ev.start, ev.stop)
        ts.nbytes = ev.nbytes
        self.executed_count += 1
        self._release_deps_of(ts)
        if ts.cancelled:
            ts.cancelled = False
            self._set_memory(ts)
            if not self._needed(ts):
                self._out.append(DropData(ts.key))
                self._set_gone(ts)
                return
            # Freed while it ran, but a task sent here since needs it as a
            # dependency: keep it, and tell the scheduler we hold it.
            self._pending_add_keys[ts.key] = ts.nbytes
        else:
            self._set_memory(ts)
            self._out.append(
                SendMsg(TaskFinished(key=ts.key, nbytes=ev.nbytes, type_name=ev.type_name, start=ev.start, stop=ev.stop, thread=ev.thread))
            )
        # Local tasks may wait for this one: a task is sent here with a
        # dependency that the scheduler has from elsewhere while a stale run
        # of that dependency still goes on here.  Without this they waited
        # for ever.
        self._wake_dependents(ts)

    def _superseded_returned(self, key: str) -> bool:
        """A superseded run of ``key`` returned: give back its slot and
        resources; its result (which the shell did not store) or error is
        of no use, the key has a put value.  False if there is none."""
        held = self.superseded.pop(key, None)
        if held is None:
            return False
        self.executed_count += 1
        self._give_back(held)
        return True

    def _execute_failure(self, ev: ExecuteFailure) -> None:
        if self._superseded_returned(ev.key):
            return
        ts = self.tasks.get(ev.key)
        if ts is None or ts.state != "executing":
            raise InvalidWorkerEvent(f"execution result for {ev.key!r}, which is not executing")
        self._leave_executing(ts)
        self.executed_count += 1
        # (Dependencies were not released for a cancelled run before: they
        # stayed in memory, unwanted, for ever.)
        self._release_deps_of(ts)
        # Fetch the key instead when the scheduler has it elsewhere and
        # needs it here: local tasks wait for it, or it asked for a copy.
        stale, ts.replica = ts.replica, False
        refetch = stale or any(t.state == "waiting" for t in ts.dependents)
        if ts.cancelled:
            ts.cancelled = False
            if not refetch:
                self._set_gone(ts)
                return
        elif not stale:
            # (Not for a run that the scheduler's request for a copy showed
            # to be stale: it has the key in memory, the error is moot.)
            ts.state = "error"
            self._out.append(
                SendMsg(
                    TaskErred(
                        key=ts.key,
                        exception=ev.exception,
                        exception_text=ev.exception_text,
                        traceback_text=ev.traceback_text,
                        type_name=ev.type_name,
                        start=ev.start,
                        stop=ev.stop,
                        thread=ev.thread,
                    )
                )
            )
        if refetch:
            # Local tasks wait for this key, or the scheduler asked for a
            # copy: either way it says the key is in memory elsewhere, and
            # this run was a stale one.  Fetch the key instead (or, with no
            # holder left, reschedule those tasks).
            ts.state = "fetch"
            self._queue_fetch(ts)

    def _gather_done(self, ev: GatherDepDone) -> None:
        in_flight = self.in_flight_workers.pop(ev.worker, None)
        if in_flight is None:
            raise InvalidWorkerEvent(f"no transfer from {ev.worker} in flight")
        for dts in in_flight:
            if dts.key in ev.nbytes:
                dts.nbytes = ev.nbytes[dts.key]
                dts.cancelled = False
                self._set_memory(dts)
                # Not "cancelled or not needed": a task sent since the fetch
                # was cancelled may need it again, and lost it with the drop.
                if not self._needed(dts):
                    self._out.append(DropData(dts.key))
                    self._set_gone(dts)
                    continue
                # The scheduler learns of this copy (AddKeys) and frees it
                # with the key: keep it until then, like any other replica.
                dts.wanted = True
                self._pending_add_keys[dts.key] = dts.nbytes
                self._wake_dependents(dts)
            else:
                self._fetch_failed_from(dts, ev.worker)
        # Keys that arrived but were taken off this transfer meanwhile (now
        # computed here, say): the shell stored them all the same.  Unless
        # the key is in memory here anyway, drop the copy, or the store
        # keeps a value the state does not know of.
        asked = {t.key for t in in_flight}
        for key in ev.nbytes:
            if key not in asked:
                t = self.tasks.get(key)
                if t is None or t.state != "memory":
                    self._out.append(DropData(key))

    def _wake_dependents(self, ts: WorkerTask) -> None:
        for t in ts.dependents:
            t.waiting_for.discard(ts)
            if not t.waiting_for and t.state == "waiting":
                self._make_ready(t)

    def _gather_failed(self, ev: GatherDepFailed) -> None:
        in_flight = self.in_flight_workers.pop(ev.worker, None)
        if in_flight is None:
            raise InvalidWorkerEvent(f"no transfer from {ev.worker} in flight")
        for dts in in_flight:
            self._fetch_failed_from(dts, ev.worker)
        # That peer is likely gone: stop trying it for anything else.
        for dts in list(self.fetch_by_worker.pop(ev.worker, {})):
            if ev.worker in dts.who_has:
                dts.who_has.remove(ev.worker)
            if dts.state == "fetch":
                self._queue_fetch(dts)

    def _data_put(self, ev: DataPut) -> None:
        for key, n in ev.nbytes.items():
            if n < 0:
                raise InvalidWorkerEvent(f"negative size for {key!r}")
        for key, n in ev.nbytes.items():
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WorkerTask(key)
            elif ts.state == "executing":
                # The put value wins over the run's result to come (and
                # error): the run goes on, superseded, holding its slot and
                # resources until it returns.  Its inputs are not needed
                # here any more (the run holds its own references).
                self.executing.discard(ts)
                self.superseded[key] = ts.resources
                ts.resources = {}
                ts.cancelled = False
                self._release_deps_of(ts)
            elif ts.state in ("fetch", "flight"):
                self._forget_fetch(ts)
            elif ts.state == "memory":
                # A new value replaces the old: _set_memory below counts
                # only keys that were not in memory yet.
                self.nbytes_in_memory += max(n, 0) - max(ts.nbytes, 0)
            ts.nbytes = n
            ts.wanted = True
            self._set_memory(ts)
            self._wake_dependents(ts)

    def _steal_request(self, ev: StealRequestEvent) -> None:
        # Only a task that has not started may go: one already handed to the
        # executor cannot be taken back from its thread.
        ts = self.tasks.get(ev.key)
        stolen = ts is not None and ts.state in ("waiting", "ready") and not ts.cancelled
        # Nor one that a task here waits for: dropping it stranded that task
        # 'waiting' for nothing (it has no holder to fetch the key from).
        stolen = stolen and ts is not None and not any(t.state == "waiting" for t in ts.dependents)
        if stolen:
            assert ts is not None
            self._drop(ts)
        self._out.append(SendMsg(StealResponse(key=ev.key, stolen=stolen)))

    def _acquire_replicas(self, ev: AcquireReplicasEvent) -> None:
        """The scheduler wants a copy of keys it has in memory elsewhere
        (their holder retires) and waits until it hears of one here."""
        for key, holders in ev.who_has.items():
            others = [w for w in holders if w != self.address]
            ts = self.tasks.get(key)
            if ts is None:
                ts = self.tasks[key] = WorkerTask(key)
                ts.state = "fetch"
                ts.wanted = True
                ts.nbytes = max(ev.nbytes.get(key, 0), 0)
                ts.who_has = others
                self._queue_fetch(ts)
                continue
            ts.wanted = True
            # More places to fetch it from, should the ones known fail.
            ts.who_has.extend(w for w in others if w not in ts.who_has)
            if ts.state != "memory" and ev.nbytes.get(key, -1) >= 0:
                ts.nbytes = ev.nbytes[key]
            if ts.state == "memory":
                # Kept here without the scheduler counting it (it would not
                # ask us otherwise, and waits): tell it.
                self._pending_add_keys[key] = ts.nbytes
            elif ts.state == "executing":
                # A stale run (the key is in memory elsewhere): its result
                # will do, reported as usual; should it fail, fetch.
                ts.replica = True
            elif ts.state in ("waiting", "ready", "error"):
                # A stale compute that has not started, or has failed:
                # fetch the key rather than compute it (what it waits for
                # may never come: it was rescheduled then, not fetched).
                self._release_deps_of(ts)
                ts.waiting_for.clear()
                ts.state = "fetch"  # (a ready task's heap entry goes stale)
                self._queue_fetch(ts)
            # fetch, flight: on its way already.

    def _pause(self, ev: PauseEvent) -> None:
        self.paused = ev.paused

    # ------------------------------------------------------------ helpers

    def _make_ready(self, ts: WorkerTask) -> None:
        ts.state = "ready"
        self._seq += 1
        heapq.heappush(self.ready, (ts.priority, self._seq, ts))

    def _leave_executing(self, ts: WorkerTask) -> None:
        self.executing.discard(ts)
        self._give_back(ts.resources)

    def _give_back(self, resources: dict[str, float]) -> None:
        for name, need in resources.items():
            self.available_resources[name] = self.available_resources.get(name, 0.0) + need
        if resources and self.constrained:
            # Resources came back: the tasks set aside for want of them
            # compete again, by priority (less those dropped meanwhile).
            self.ready.extend(e for e in self.constrained if e[2].state == "ready")
            self.constrained.clear()
            heapq.heapify(self.ready)

    def _set_memory(self, ts: WorkerTask) -> None:
        if ts.state != "memory":
            self.nbytes_in_memory += max(ts.nbytes, 0)
        ts.state = "memory"
        ts.coming_from = ""
        ts.replica = False

    def _needed(self, ts: WorkerTask) -> bool:
        return ts.wanted or any(t.state in ("waiting", "ready") for t in ts.dependents)

    def _release_deps_of(self, ts: WorkerTask) -> None:
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
            self._maybe_drop(dts)
        ts.dependencies.clear()

    def _maybe_drop(self, ts: WorkerTask) -> None:
        if ts.wanted or any(t.state in ("waiting", "ready", "executing") for t in ts.dependents):
            return
        state = ts.state
        if state == "executing":
            ts.cancelled = True
        elif state == "flight":
            ts.cancelled = True
        elif state == "memory":
            self._out.append(DropData(ts.key))
            # (Before _set_gone, which drops the pending announcement.)
            announced = ts.key not in self._pending_add_keys
            self._set_gone(ts)
            if not self._freeing:
                # Our own decision (a fetched copy nothing here needs any
                # more): the scheduler counted this replica, so tell it.
                if announced:
                    self._pending_release.append(ts.key)
        else:
            self._drop(ts)

    def _drop(self, ts: WorkerTask) -> None:
        if ts.state == "ready":
            ts.state = "dropped"  # lazily removed from the heap
        elif ts.state == "fetch":
            self._forget_fetch(ts)
        for dts in ts.dependencies:
            dts.dependents.discard(ts)
            if not dts.wanted:
                self._maybe_drop(dts)
        ts.dependencies.clear()
        ts.waiting_for.clear()
        self._set_gone(ts)

    def _set_gone(self, ts: WorkerTask) -> None:
        if ts.state == "memory":
            self.nbytes_in_memory -= max(ts.nbytes, 0)
            # Dropped in the same event it arrived: do not announce it.
            self._pending_add_keys.pop(ts.key, None)
        if ts.state == "ready":
            ts.state = "dropped"
        if self.tasks.get(ts.key) is ts:
            del self.tasks[ts.key]
        if ts.state != "dropped":
            ts.state = "forgotten"
        for t in list(ts.dependents):
            t.dependencies.discard(ts)
            t.waiting_for.discard(ts)
        ts.dependents.clear()

    def _queue_fetch(self, dts: WorkerTask) -> None:
        if not dts.who_has:
            self._missing(dts)
            return
        # Prefer a peer we are not already fetching from, then the least busy.
        best = min(dts.who_has, key=lambda w: (w in self.in_flight_workers, len(self.fetch_by_worker.get(w, ()))))
        self.fetch_by_worker.setdefault(best, {})[dts] = None

    def _forget_fetch(self, dts: WorkerTask) -> None:
        for w, group in list(self.fetch_by_worker.items()):
            group.pop(dts, None)
            if not group:
                del self.fetch_by_worker[w]
        if dts.state == "flight" and dts.coming_from:
            flight = self.in_flight_workers.get(dts.coming_from)
            if flight is not None:
                flight.discard(dts)
        dts.coming_from = ""

    def _fetch_failed_from(self, dts: WorkerTask, worker: str) -> None:
        if dts.state != "flight":
            return
        dts.coming_from = ""
        if worker in dts.who_has:
            dts.who_has.remove(worker)
        if not self._needed(dts):  # see _gather_done
            self._set_gone(dts)
            return
        dts.cancelled = False
        self._out.append(SendMsg(MissingData(key=dts.key, worker=worker)))
        dts.state = "fetch"
        self._queue_fetch(dts)

    def _missing(self, dts: WorkerTask) -> None:
        """No known holder for a dependency: fail the dependents back to the
        scheduler so that it reschedules them with fresh locations."""
        # Transitively: a rescheduled task that other local tasks wait for
        # would otherwise vanish from under them, leaving them 'waiting' for
        # nothing.  Tasks kept only as dependencies (the scheduler freed
        # them) go without a word.
        stack = [t for t in dts.dependents if t.state == "waiting"]
        while stack:
            t = stack.pop()
            if t.state != "waiting":
                continue
            if t.wanted:
                self._out.append(SendMsg(Reschedule(key=t.key)))
            stack.extend(d for d in t.dependents if d.state == "waiting")
            self._drop(t)
        self._set_gone(dts)

    def _short(self, prefix: str) -> float | None:
        """The measured run time of a key prefix if under PREFETCH_BELOW."""
        d = self.durations.get(prefix)
        return d if d is not None and d < PREFETCH_BELOW else None

    def _runs_only_short(self) -> bool:
        """Is every run in the executor (superseded ones too) measured short?"""
        return all(self._short(t.prefix) is not None for t in self.executing) and all(
            self._short(key_prefix(k)) is not None for k in self.superseded
        )

    def _may_start(self, ts: WorkerTask, only_short: bool | None = None) -> bool:
        """May ``ts`` be handed to the executor now (a slot being free)?

        Beyond one per thread, only a task measured short, and only while
        everything in the executor is too: a task handed over can no longer
        be stolen, so nothing queues behind a run that may take long.
        ``only_short`` is :meth:`_runs_only_short`, if the caller knows it.
        """
        if self.n_executing < self.nthreads:
            return True
        d = self._short(ts.prefix)
        if d is None or not (self._runs_only_short() if only_short is None else only_short):
            return False
        per_thread = min(PREFETCH_MAX, max(1, int(PREFETCH_HORIZON / d))) if d > 0 else PREFETCH_MAX
        return self.n_executing < self.nthreads + max(2, per_thread * self.nthreads)

    def _measured(self, prefix: str, start: float, stop: float) -> None:
        if stop <= start:
            return  # no timing (or a clock step): learn nothing
        old = self.durations.get(prefix)
        if old is None and len(self.durations) >= 10_000:
            self.durations.clear()  # keys without a shared prefix: keep it bounded
        d = stop - start
        self.durations[prefix] = d if old is None else 0.5 * (old + d)

    def _schedule(self) -> None:
        """Hand ready tasks to the executor and start transfers."""
        if not self.paused:
            only_short = self._runs_only_short()
            while self.ready and self.n_executing < self.slots:
                entry = self.ready[0]
                ts = entry[2]
                if ts.state != "ready":
                    heapq.heappop(self.ready)
                    continue
                if not self._may_start(ts, only_short):
                    break  # no thread free, and not known to be short
                heapq.heappop(self.ready)
                if ts.resources and not self._take_resources(ts):
                    # Its resources are taken: set it aside rather than
                    # stop here, or the tasks behind it (needing nothing,
                    # or resources still free) waited while threads idled.
                    self.constrained.append(entry)
                    continue
                ts.state = "executing"
                self.executing.add(ts)
                only_short = only_short and self._short(ts.prefix) is not None
                assert ts.function is not None and ts.args is not None
                self._out.append(Execute(ts.key, ts.function, ts.args, tuple(d.key for d in ts.dependencies)))
        while self.fetch_by_worker and len(self.in_flight_workers) < self.max_concurrent_fetches:
            candidates = [w for w in self.fetch_by_worker if w not in self.in_flight_workers]
            if not candidates:
                break
            worker = candidates[0]
            group = self.fetch_by_worker.pop(worker)
            chosen: list[WorkerTask] = []
            total = 0
            for dts in sorted(group, key=lambda t: min((d.priority for d in t.dependents), default=(0, 0, 0))):
                if dts.state != "fetch":
                    continue
                if chosen and total + dts.nbytes > self.max_transfer_bytes:
                    self.fetch_by_worker.setdefault(worker, {})[dts] = None
                    continue
                chosen.append(dts)
                total += max(dts.nbytes, 0)
            if not chosen:
                continue
            for dts in chosen:
                dts.state = "flight"
                dts.coming_from = worker
            self.in_flight_workers[worker] = set(chosen)
            self._out.append(GatherDep(worker, tuple(d.key for d in chosen), total))

    def _fits(self, ts: WorkerTask) -> bool:
        return all(self.available_resources.get(name, 0.0) >= need for name, need in ts.resources.items())

    def _take_resources(self, ts: WorkerTask) -> bool:
        if not self._fits(ts):
            return False
        for name, need in ts.resources.items():
            self.available_resources[name] -= need
        return True

    # ------------------------------------------------------------ checking

    def validate(self) -> None:
        for key, ts in self.tasks.items():
            assert ts.key == key
            assert ts.state in WORKER_STATES, ts
            if ts.state == "waiting":
                assert ts.waiting_for, ts
                for d in ts.waiting_for:
                    assert d.state in ("fetch", "flight", "executing", "waiting", "ready"), (ts, d)
            if ts.state == "ready":
                assert not ts.waiting_for, ts
            if ts.state == "executing":
                assert ts in self.executing
            else:
                assert not ts.replica, ts
            if ts.state == "flight":
                assert ts.coming_from and ts in self.in_flight_workers.get(ts.coming_from, ()), ts
        for ts in self.executing:
            assert ts.state == "executing" and self.tasks.get(ts.key) is ts, ts
        for key in self.superseded:
            # Never a second run of a key beside its superseded one.
            t = self.tasks.get(key)
            assert t is None or t.state not in ("waiting", "ready", "executing"), t
        assert self.n_executing <= self.slots
        # No thread idles while a ready task could run: every ready task is
        # queued, or set aside because its resources are taken right now.
        # (Only the first in priority order counts: a task measured short
        # waits behind a long one that may not be prefetched.)
        if not self.paused and self.n_executing < self.slots:
            head = min((e for e in self.ready if e[2].state == "ready"), default=None, key=lambda e: e[:2])
            assert head is None or not self._may_start(head[2]), "a ready task waits while a slot is free"
        for _, _, t in self.constrained:
            assert t.state != "ready" or not self._fits(t), f"{t!r} set aside although its resources are free"


_HANDLERS: dict[type, Any] = {
    ComputeTaskEvent: WorkerState._compute_task,
    FreeKeysEvent: WorkerState._free_keys,
    ExecuteSuccess: WorkerState._execute_success,
    ExecuteFailure: WorkerState._execute_failure,
    GatherDepDone: WorkerState._gather_done,
    GatherDepFailed: WorkerState._gather_failed,
    DataPut: WorkerState._data_put,
    PauseEvent: WorkerState._pause,
    StealRequestEvent: WorkerState._steal_request,
    AcquireReplicasEvent: WorkerState._acquire_replicas,
}
