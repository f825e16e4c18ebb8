"""The scheduler's state machine: every decision, no IO.

Theory of operation
-------------------
Everything that affects scheduling lives here.  :class:`SchedulerState` takes
events (a worker joined, a task finished, a client submitted a graph, ...)
through :meth:`SchedulerState.handle` together with the current time, and
returns the messages to send, as :class:`ToWorker` / :class:`ToClient`
instructions.  It does no IO, reads no clock, draws no random numbers and
imports no trio: the shell in :mod:`trioflow.scheduler.server` owns sockets
and timers, and tests drive this class directly (hypothesis stateful tests in
``tests/test_scheduler_state.py``).

Task states and their meaning:

============  =============================================================
released      known, not wanted by anything right now, holds no data
waiting       wanted; waits for dependencies to be in memory
no-worker     ready to run, but no worker can take it (restrictions, none)
queued        a ready root task held back because every worker is saturated
processing    sent to ``processing_on``; the worker will report back
memory        result held by the workers in ``who_has``
erred         the task (or a dependency) failed; ``exception*`` says how
forgotten     dropped from the state entirely (not stored; a final state)
============  =============================================================

Transitions are a table, :data:`TRANSITIONS`; asking for a pair that is not
in it raises :class:`InvalidTransition` before anything changes.  Events
from peers are checked before they mutate anything; a bad one raises
:class:`InvalidEvent` and leaves the state as it was.

Memory is reference counted through the graph: a task stays in memory while a
client wants it (``who_wants``) or a dependent still needs it (``waiters``);
when both are empty it is released, and once it has no dependents left either
it is forgotten.  Released tasks that still have dependents keep their run
spec, so lost results can be recomputed from lineage.

Placement (:meth:`SchedulerState.decide_worker`) picks, among the workers
allowed to run a task, the one where it would start earliest: the worker's
queued work (occupancy / threads) plus the time to fetch the dependency bytes
it does not hold.
"""

from __future__ import annotations

import collections
import heapq
import math
import sys
from collections.abc import Iterable
from typing import Any

import attrs

from ..errors import InvalidEvent, InvalidTransition, KilledWorker, LostData
from ..keys import key_prefix
from ..protocol.messages import (
    ComputeTask,
    FreeKeys,
    KeyCancelled,
    KeyErred,
    KeyInMemory,
    Message,
    StealRequest,
    TaskSpec,
)
from ..protocol.serialize import Serialized, dumps
from ..records import Record, record

__all__ = [
    "SchedulerState",
    "TaskState",
    "WorkerState",
    "ClientState",
    "ToWorker",
    "ToClient",
    "InvalidTransition",
    "InvalidEvent",
    "KilledWorker",
    "TRANSITIONS",
]

ALL_STATES = ("released", "waiting", "no-worker", "queued", "processing", "memory", "erred", "forgotten")
DEFAULT_DURATION = 0.5
DEFAULT_BANDWIDTH = 100e6
#: A worker is given root tasks while it holds fewer than
#: ceil(nthreads * worker_saturation) of them (as in dask.distributed)...
#: ... unless what it holds is known to be short: then it gets more root
#: tasks, up to about this many seconds of expected work per thread, so that
#: the scheduler round trip (milliseconds) does not leave its threads idle
#: between tasks of a few microseconds.  Run-ahead stays bounded by time,
#: which is what root-task queuing is about.
QUEUE_HORIZON = 0.01
#: ... and at most this many root tasks per thread in all.
QUEUE_SHORT_MAX = 100
#: Placement and stealing look at all workers up to this many, and at a
#: rotating window of this many (plus the holders of a task's inputs) above.
SAMPLE = 32


# ---------------------------------------------------------------- instructions


#: Transitions kept for ``client.story`` (the newest).
TRANSITION_LOG_LENGTH = 20_000


@record
class ToWorker(Record):
    address: str
    msg: Message


@record
class ToClient(Record):
    client: str
    msg: Message


Instruction = ToWorker | ToClient


# ---------------------------------------------------------------- entities


class _NoTasks(frozenset):  # type: ignore[type-arg]
    """The shared empty value of a task's rarely filled sets.

    Most tasks have no dependencies, no dependents, nothing to wait on and
    nobody waiting, and an empty ``set`` costs 216 bytes: four of them per
    task were a third of the scheduler's memory per held task.  This empty
    frozenset stands in until the first :func:`_add` (an emptied set is
    replaced by it again, not cleared); ``discard`` is the no-op it is on an
    empty set, and a stray ``add`` or ``clear`` fails loudly (frozensets have
    neither) instead of changing a shared value.
    """

    __slots__ = ()

    def discard(self, item: object) -> None:
        pass


NO_TASKS: Any = _NoTasks()

_PRIORITY_BITS = 40
_PRIORITY_MASK = (1 << _PRIORITY_BITS) - 1


def pack_priority(user: int, generation: int, order: int) -> int:
    """A task's priority as one int that sorts like ``(-user, generation, order)``.

    Smaller runs first: higher user priority, then older graphs, then earlier
    in its graph.  One int instead of a tuple of three saves about 70 bytes
    per task the scheduler holds.  ``generation`` and ``order`` must be below
    2**40 (a graph count and a position in one graph); ``user`` is any int.
    """
    return (((-user) << _PRIORITY_BITS | generation) << _PRIORITY_BITS) | order


def unpack_priority(priority: int) -> tuple[int, int, int]:
    """The ``(-user, generation, order)`` tuple a :class:`ComputeTask` carries."""
    return (
        priority >> (2 * _PRIORITY_BITS),
        (priority >> _PRIORITY_BITS) & _PRIORITY_MASK,
        priority & _PRIORITY_MASK,
    )


#: The ``workers`` and ``resources`` of a task that names none (most tasks).
#: ``resources`` is only ever replaced, never changed in place, so one empty
#: dict serves them all.
NO_WORKERS: frozenset[str] = frozenset()
NO_RESOURCES: dict[str, float] = {}


def _add(owner: TaskState, attr: str, item: TaskState) -> None:
    """``getattr(owner, attr).add(item)``, making the set on first use."""
    current = getattr(owner, attr)
    if current is NO_TASKS:
        setattr(owner, attr, {item})
    else:
        current.add(item)



class TaskState:
    __slots__ = (
        "key",
        "prefix",
        "function",
        "args",
        "dependencies",
        "dependents",
        "state",
        "priority",
        "who_has",
        "processing_on",
        "waiting_on",
        "waiters",
        "who_wants",
        "nbytes",
        "exception",
        "exception_text",
        "traceback_text",
        "type_name",
        "exception_blame",
        "retries",
        "suspicious",
        "workers",
        "allow_other_workers",
        "resources",
        "erred_by",
        "result_type",
        "died_on",
    )

    def __init__(self, key: str, function: bytes | None, args: Serialized | None) -> None:
        self.key = key
        # One string per prefix, not one per task.
        self.prefix = sys.intern(key_prefix(key))
        self.function = function
        self.args = args
        self.dependencies: set[TaskState] = NO_TASKS
        self.dependents: set[TaskState] = NO_TASKS
        self.state = "released"
        self.priority = 0  # see pack_priority
        self.who_has: set[WorkerState] = set()
        self.processing_on: WorkerState | None = None
        self.waiting_on: set[TaskState] = NO_TASKS
        self.waiters: set[TaskState] = NO_TASKS
        self.who_wants: set[ClientState] = set()
        self.nbytes = -1
        self.exception: Serialized | None = None
        self.exception_text = ""
        self.traceback_text = ""
        self.type_name = ""
        self.exception_blame: TaskState | None = None
        self.retries = 0
        self.suspicious = 0
        self.workers: frozenset[str] = NO_WORKERS
        self.allow_other_workers = False
        self.resources: dict[str, float] = NO_RESOURCES
        self.erred_by = ""
        self.result_type = ""
        self.died_on: tuple[str, ...] = ()

    # Entities hash by name, not by id(): the order in which a set of them
    # iterates decides which transition runs first and which worker wins a
    # tie, and with id() hashes that order changed from run to run, so the
    # same events could lead to different decisions (and a failure found by
    # the stateful tests could not be replayed).  Equality stays identity.
    # A str caches its hash, so this costs a call, not a rehash.
    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def runnable(self) -> bool:
        return self.function is not None

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


class WorkerState:
    __slots__ = (
        "address",
        "name",
        "nthreads",
        "memory_limit",
        "resources",
        "used_resources",
        "processing",
        "has_what",
        "nbytes",
        "occupancy",
        "nanny",
        "pid",
        "local_directory",
        "services",
        "metrics",
        "last_seen",
        "status",
        "_hash",
    )

    def __init__(self, address: str, name: str, nthreads: int, memory_limit: int, resources: dict[str, float]) -> None:
        self.address = address
        self._hash = hash(address)
        self.name = name
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = dict(resources)
        self.used_resources = {k: 0.0 for k in resources}
        self.processing: dict[TaskState, float] = {}
        self.has_what: dict[TaskState, None] = {}
        self.nbytes = 0
        self.occupancy = 0.0
        self.nanny = ""
        self.pid = 0
        self.local_directory = ""
        self.services: dict[str, int] = {}
        self.metrics: dict[str, Any] = {}
        self.last_seen = 0.0
        self.status = "running"

    def __hash__(self) -> int:  # by address: see TaskState.__hash__
        return self._hash

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} {self.name!r} processing={len(self.processing)} has={len(self.has_what)}>"


class ClientState:
    __slots__ = ("client_id", "wants_what", "_hash")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.wants_what: set[TaskState] = set()
        self._hash = hash(client_id)

    def __hash__(self) -> int:  # by id: see TaskState.__hash__
        return self._hash

    def __repr__(self) -> str:
        return f"<ClientState {self.client_id} wants={len(self.wants_what)}>"


# ---------------------------------------------------------------- events


@record(kw_only=True)
class AddWorker(Record):
    address: str
    name: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float] = attrs.field(factory=dict)
    nanny: str = ""
    pid: int = 0
    local_directory: str = ""
    services: dict[str, int] = attrs.field(factory=dict)
    nbytes: dict[str, int] = attrs.field(factory=dict)


@record(kw_only=True)
class RemoveWorker(Record):
    address: str
    reason: str = ""
    safe: bool = False  # a clean shutdown: running tasks are not suspicious


@record(kw_only=True)
class AddClient(Record):
    client: str


@record(kw_only=True)
class RemoveClient(Record):
    client: str


@record(kw_only=True)
class UpdateGraphEvent(Record):
    client: str
    tasks: list[TaskSpec]
    keys: list[str]


@record(kw_only=True)
class TaskFinishedEvent(Record):
    worker: str
    key: str
    nbytes: int
    type_name: str = ""
    start: float = 0.0
    stop: float = 0.0


@record(kw_only=True)
class TaskErredEvent(Record):
    worker: str
    key: str
    exception: Serialized | None
    exception_text: str
    traceback_text: str
    type_name: str


@record(kw_only=True)
class ReleaseKeysEvent(Record):
    client: str
    keys: list[str]


@record(kw_only=True)
class CancelKeysEvent(Record):
    client: str
    keys: list[str]


@record(kw_only=True)
class UpdateDataEvent(Record):
    client: str
    who_has: dict[str, list[str]]
    nbytes: dict[str, int]


@record(kw_only=True)
class AddKeysEvent(Record):
    worker: str
    nbytes: dict[str, int]


@record(kw_only=True)
class MissingDataEvent(Record):
    worker: str  # who reports
    key: str
    errant_worker: str  # who was said to hold it


@record(kw_only=True)
class RescheduleEvent(Record):
    worker: str
    key: str


@record(kw_only=True)
class ReleaseWorkerDataEvent(Record):
    worker: str
    keys: list[str]


@record(kw_only=True)
class HeartbeatEvent(Record):
    worker: str
    metrics: dict[str, Any]


@record(kw_only=True)
class StealResponseEvent(Record):
    worker: str
    key: str
    stolen: bool


Event = (
    AddWorker
    | RemoveWorker
    | AddClient
    | RemoveClient
    | UpdateGraphEvent
    | TaskFinishedEvent
    | TaskErredEvent
    | ReleaseKeysEvent
    | CancelKeysEvent
    | UpdateDataEvent
    | AddKeysEvent
    | MissingDataEvent
    | ReleaseWorkerDataEvent
    | RescheduleEvent
    | HeartbeatEvent
    | StealResponseEvent
)


# ---------------------------------------------------------------- the machine



def _key_in_memory(ts: TaskState) -> KeyInMemory:
    """Tell a client its key is ready, and where: its gather then goes
    straight to a holder instead of asking us first."""
    return KeyInMemory(key=ts.key, type_name=ts.result_type, who_has=[w.address for w in ts.who_has], nbytes=ts.nbytes)

class SchedulerState:
    """See the module docstring."""

    def __init__(
        self,
        *,
        allowed_failures: int = 3,
        bandwidth: float = DEFAULT_BANDWIDTH,
        validate: bool = False,
        worker_saturation: float = 1.1,
    ) -> None:
        if not worker_saturation > 0:
            raise ValueError(f"worker_saturation must be positive, got {worker_saturation}")
        #: Root tasks (no dependencies, no restrictions) go to a worker only
        #: while it runs fewer than ceil(nthreads * worker_saturation) tasks
        #: (more while those are measured short, see QUEUE_HORIZON); the
        #: rest wait in ``queued`` at the scheduler, so a huge graph does
        #: not land on the workers all at once.  ``inf`` turns it off.
        self.worker_saturation = worker_saturation
        self.queued: dict[TaskState, None] = {}
        self._queue_heap: list[tuple[int, int, TaskState]] = []
        self._queue_seq = 0
        self._to_fill: set[WorkerState] = set()
        #: Work stealing: tasks asked back from a busy worker -> the idle
        #: worker that will get them if the busy one had not started them.
        self.stealing: dict[TaskState, WorkerState] = {}
        self._worker_list: list[WorkerState] | None = None
        self._cursor = 0
        self._idle_candidates: set[WorkerState] = set()
        self.steal_count = 0
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[str, WorkerState] = {}
        self.clients: dict[str, ClientState] = {}
        self.unrunnable: set[TaskState] = set()
        self.allowed_failures = allowed_failures
        self.bandwidth = bandwidth
        self.validate_after_each = validate
        self.generation = 0
        self.prefix_durations: dict[str, float] = {}
        self.names: dict[str, str] = {}  # worker name -> address
        self.transition_counter = 0
        #: The newest transitions, for ``client.story``: (key, from, to,
        #: worker it is processing on or "", time of the event).
        self.transition_log: collections.deque[tuple[str, str, str, str, float]] = collections.deque(maxlen=TRANSITION_LOG_LENGTH)
        self.task_counts: dict[str, int] = dict.fromkeys(ALL_STATES[:-1], 0)
        self.now = 0.0
        self._out: list[Instruction] = []
        self._pending_unrunnable: set[TaskState] = set()
        self._maybe_unwanted: set[TaskState] = set()
        self._to_run: set[TaskState] = set()
        # Per-prefix task counts by state, for progress displays.
        self.prefix_counts: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------ entry point

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

    # ------------------------------------------------------------ workers

    def _add_worker(self, ev: AddWorker) -> None:
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

    def _remove_worker(self, ev: RemoveWorker) -> None:
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

    # ------------------------------------------------------------ clients

    def _add_client(self, ev: AddClient) -> None:
        if ev.client in self.clients:
            raise InvalidEvent(f"client {ev.client} is already registered")
        self.clients[ev.client] = ClientState(ev.client)

    def _remove_client(self, ev: RemoveClient) -> None:
        cs = self.clients.pop(ev.client, None)
        if cs is None:
            return
        recs: dict[TaskState, str] = {}
        for ts in cs.wants_what:
            ts.who_wants.discard(cs)
            self._maybe_release(ts, recs)
        cs.wants_what.clear()
        self._transitions(recs)

    def _client(self, client: str) -> ClientState:
        try:
            return self.clients[client]
        except KeyError:
            raise InvalidEvent(f"unknown client {client!r}") from None

    # ------------------------------------------------------------ graphs

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

    # ------------------------------------------------------------ task reports

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

    # ------------------------------------------------------------ helpers

    def _prefix_count(self, prefix: str, state: str, delta: int) -> None:
        counts = self.prefix_counts.get(prefix)
        if counts is None:
            counts = self.prefix_counts[prefix] = {}
        counts[state] = counts.get(state, 0) + delta

    def _update_duration(self, prefix: str, duration: float) -> None:
        old = self.prefix_durations.get(prefix)
        self.prefix_durations[prefix] = duration if old is None else 0.5 * old + 0.5 * duration

    def _add_replica(self, ts: TaskState, ws: WorkerState, nbytes: int) -> None:
        # A key has one size; when a new report changes it, every holder's
        # total moves with it, or removing a replica later would subtract
        # the wrong amount and drive ``ws.nbytes`` away from (even below) 0.
        delta = max(nbytes, 0) - max(ts.nbytes, 0)
        if delta:
            for other in ts.who_has:
                other.nbytes += delta
        ts.nbytes = nbytes
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what[ts] = None
            ws.nbytes += max(nbytes, 0)

    def _remove_replica(self, ts: TaskState, ws: WorkerState) -> None:
        ts.who_has.discard(ws)
        if ws.has_what.pop(ts, 0) is None:
            ws.nbytes -= max(ts.nbytes, 0)

    def _set_exception(self, ts: TaskState, exc: BaseException, worker: str = "") -> None:
        ts.exception = dumps(exc)
        ts.exception_text = str(exc)
        ts.traceback_text = ""
        ts.type_name = type(exc).__name__
        ts.erred_by = worker

    def _maybe_release(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        if ts.who_wants or ts.waiters:
            return
        if ts.state in ("released",):
            if not ts.dependents:
                recs[ts] = "forgotten"
        elif ts.state == "erred":
            # An erred task stays erred (it is the blame of its dependents)
            # until nothing depends on it any more.
            if not ts.dependents:
                recs[ts] = "forgotten"
        else:
            recs[ts] = "released"

    def _report_erred(self, ts: TaskState, clients: Iterable[ClientState]) -> None:
        blame = ts.exception_blame or ts
        for cs in clients:
            self._out.append(
                ToClient(
                    cs.client_id,
                    KeyErred(
                        key=ts.key,
                        exception=blame.exception,
                        exception_text=blame.exception_text,
                        traceback_text=blame.traceback_text,
                        type_name=blame.type_name,
                    ),
                )
            )

    def _valid_workers_now(self, ts: TaskState, pool: Iterable[WorkerState] | None = None) -> list[WorkerState]:
        """Workers allowed to run ``ts`` and with resources free right now."""
        workers = self.workers.values() if pool is None else pool
        out = []
        restricted = ts.workers and not ts.allow_other_workers
        for ws in workers:
            if ws.status != "running":
                continue
            if restricted and ws.address not in ts.workers and ws.name not in ts.workers:
                continue
            if ts.resources and not self._fits(ts, ws):
                continue
            out.append(ws)
        if ts.workers and ts.allow_other_workers and out:
            preferred = [w for w in out if w.address in ts.workers or w.name in ts.workers]
            if preferred:
                return preferred
        return out

    @staticmethod
    def _fits(ts: TaskState, ws: WorkerState) -> bool:
        for name, need in ts.resources.items():
            total = ws.resources.get(name)
            if total is None or total - ws.used_resources.get(name, 0.0) < need:
                return False
        return True

    def _release_resources(self, ts: TaskState, ws: WorkerState) -> bool:
        if not ts.resources:
            return False
        for name, need in ts.resources.items():
            if name in ws.used_resources:
                ws.used_resources[name] -= need
        return True

    def _sample_workers(self) -> list[WorkerState]:
        """All running workers, or a rotating window of SAMPLE of them in a
        large cluster, so that placement costs O(1) per task, not O(workers)."""
        wl = self._worker_list
        if wl is None:
            wl = self._worker_list = list(self.workers.values())
        n = len(wl)
        if n <= SAMPLE:
            return [w for w in wl if w.status == "running"]
        start = self._cursor % n
        self._cursor = start + SAMPLE
        return [w for w in (wl[(start + i) % n] for i in range(SAMPLE)) if w.status == "running"]

    def decide_worker(self, ts: TaskState) -> WorkerState | None:
        """The worker where ``ts`` would start earliest, or None."""
        candidates: list[WorkerState]
        if ts.workers or ts.resources:
            candidates = self._valid_workers_now(ts)
        else:
            candidates = self._sample_workers()
            if ts.dependencies and len(self.workers) > SAMPLE:
                # A large cluster: the workers holding the inputs, plus a
                # rotating sample of the others (exact below SAMPLE workers).
                seen = set(candidates)
                holders = {ws for dts in ts.dependencies for ws in dts.who_has if ws.status == "running" and ws not in seen}
                candidates += sorted(holders, key=lambda w: w.address)
        if not candidates:
            return None
        bandwidth = self.bandwidth
        best = None
        best_cost = 0.0
        for ws in candidates:
            cost = ws.occupancy / ws.nthreads
            if ts.dependencies:
                missing = 0
                for dts in ts.dependencies:
                    if ws not in dts.who_has:
                        missing += max(dts.nbytes, 0)
                cost += missing / bandwidth
            if best is None or cost < best_cost or (cost == best_cost and len(ws.processing) < len(best.processing)):
                best, best_cost = ws, cost
        return best

    # ------------------------------------------------------------ transitions

    def _transitions(self, recs: dict[TaskState, str]) -> None:
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

    def _transition(self, ts: TaskState, finish: str, recs: dict[TaskState, str], deferred: bool = True) -> None:
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

    def _count_move(self, ts: TaskState, start: str, end: str) -> None:
        if end != start:
            counts = self.task_counts
            counts[start] -= 1
            if end != "forgotten":
                counts[end] += 1
            pc = self.prefix_counts[ts.prefix]
            pc[start] -= 1
            if end != "forgotten":
                pc[end] = pc.get(end, 0) + 1

    def _t_released_waiting(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
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

    def _t_waiting_processing(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
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

    # ------------------------------------------------------------ root-task queue

    def _is_root(self, ts: TaskState) -> bool:
        return self.worker_saturation != float("inf") and not ts.dependencies and not ts.workers and not ts.resources

    def _saturated(self, ws: WorkerState) -> bool:
        n = len(ws.processing)
        if n < max(math.ceil(ws.nthreads * self.worker_saturation), 1):
            return False
        # Tasks of a prefix not seen finishing yet count DEFAULT_DURATION, so
        # this extends only once the work is measured to be short.
        return ws.occupancy >= QUEUE_HORIZON * ws.nthreads or n >= QUEUE_SHORT_MAX * ws.nthreads

    def _enqueue(self, ts: TaskState) -> None:
        ts.state = "queued"
        self.queued[ts] = None
        self._queue_seq += 1
        heapq.heappush(self._queue_heap, (ts.priority, self._queue_seq, ts))

    def _dequeue(self, ts: TaskState) -> None:
        self.queued.pop(ts, None)  # the heap entry is dropped lazily

    def _fill_from_queue(self) -> None:
        """Give workers with free slots the highest-priority queued tasks."""
        workers, self._to_fill = self._to_fill, set()
        heap = self._queue_heap
        for ws in sorted(workers, key=lambda w: len(w.processing) / w.nthreads):
            # Identity, not address: a worker that left and came back on the
            # same address is a new WorkerState; tasks sent to the old one
            # were 'processing' on a removed worker for ever.
            if self.workers.get(ws.address) is not ws or ws.status != "running":
                continue
            while heap and not self._saturated(ws):
                _, _, ts = heap[0]
                if ts not in self.queued or ts.state != "queued":
                    heapq.heappop(heap)
                    continue
                heapq.heappop(heap)
                self._dequeue(ts)
                self._count_move(ts, "queued", "processing")
                self.transition_counter += 1
                self._send_to_worker(ts, ws)
        if not self.queued:
            heap.clear()

    # ------------------------------------------------------------ work stealing

    def _steal_for_idle(self) -> None:
        """Ask busy workers to hand not-yet-started tasks to idle ones.

        A task moves only if it is allowed on the thief (no restrictions) and
        fetching its missing dependencies would take less than twice its
        expected run time.  The victim answers with a StealResponse; only a
        task it had not started moves (see :meth:`_steal_response`).
        """
        thieves, self._idle_candidates = self._idle_candidates, set()
        if self.queued:
            return  # the queue feeds idle workers
        for thief in thieves:
            if self.workers.get(thief.address) is not thief or thief.status != "running":  # see _fill_from_queue
                continue
            room = thief.nthreads + 1 - len(thief.processing) - sum(1 for t in self.stealing.values() if t is thief)
            if room <= 0:
                continue
            victim = max(self._sample_workers(), key=lambda w: len(w.processing) - w.nthreads, default=thief)
            excess = len(victim.processing) - victim.nthreads - 1
            if victim is thief or excess <= 0:
                continue
            take = min(room, (excess + 1) // 2)
            for ts in reversed(list(victim.processing)):
                if take <= 0:
                    break
                if ts in self.stealing or ts.workers or ts.resources:
                    continue
                duration = self.prefix_durations.get(ts.prefix, DEFAULT_DURATION)
                missing = sum(max(d.nbytes, 0) for d in ts.dependencies if thief not in d.who_has)
                if missing / self.bandwidth > 2 * duration:
                    continue
                self.stealing[ts] = thief
                self.steal_count += 1
                self._out.append(ToWorker(victim.address, StealRequest(key=ts.key)))
                take -= 1

    def _steal_response(self, ev: StealResponseEvent) -> None:
        ts = self.tasks.get(ev.key)
        victim = self.workers.get(ev.worker)
        if ts is None or victim is None:
            return
        thief: WorkerState | None = self.stealing.pop(ts, None)
        if not ev.stolen or ts.state != "processing" or ts.processing_on is not victim:
            return
        # The victim dropped it: move it.
        d = victim.processing.pop(ts, 0.0)
        victim.occupancy = max(victim.occupancy - d, 0.0) if victim.processing else 0.0
        ts.processing_on = None
        if thief is None or self.workers.get(thief.address) is not thief or thief.status != "running":
            thief = self.decide_worker(ts)
        if thief is None:
            self._count_move(ts, "processing", "no-worker")
            ts.state = "no-worker"
            self.unrunnable.add(ts)
        else:
            self.transition_counter += 1
            self._send_to_worker(ts, thief)
        if self.queued:  # the victim has room for a queued root task now
            self._to_fill.add(victim)
            self._fill_from_queue()

    def _t_queued_released(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        self._dequeue(ts)
        self._to_released(ts, recs)

    def _send_to_worker(self, ts: TaskState, ws: WorkerState) -> None:
        duration = self.prefix_durations.get(ts.prefix, DEFAULT_DURATION)
        ts.state = "processing"
        ts.processing_on = ws
        ws.processing[ts] = duration
        ws.occupancy += duration
        if ts.resources:
            for name, need in ts.resources.items():
                ws.used_resources[name] = ws.used_resources.get(name, 0.0) + need
        who_has = {dts.key: [w.address for w in dts.who_has] for dts in ts.dependencies}
        nbytes = {dts.key: dts.nbytes for dts in ts.dependencies}
        assert ts.function is not None and ts.args is not None
        self._out.append(
            ToWorker(
                ws.address,
                ComputeTask(
                    key=ts.key,
                    function=ts.function,
                    args=ts.args,
                    who_has=who_has,
                    nbytes=nbytes,
                    priority=unpack_priority(ts.priority),
                    resources=dict(ts.resources),  # never the shared NO_RESOURCES
                    duration=duration,
                ),
            )
        )

    def _t_noworker_processing(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        ws = self.decide_worker(ts)
        if ws is None:
            return
        self.unrunnable.discard(ts)
        self._send_to_worker(ts, ws)

    def _leave_processing(self, ts: TaskState) -> WorkerState | None:
        ws = ts.processing_on
        if ws is not None:
            d = ws.processing.pop(ts, None)
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

    def _t_processing_memory(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        self._leave_processing(ts)
        ts.state = "memory"
        ts.exception_blame = None
        ts.suspicious = 0
        ts.died_on = ()
        self._became_memory(ts, recs)

    def _became_memory(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        for dts in ts.dependents:
            dts.waiting_on.discard(ts)
            # A dependent whose own result arrived in the same event is
            # already headed for memory: running it would be wrong.
            if not dts.waiting_on and dts.state == "waiting" and recs.get(dts) != "memory":
                recs[dts] = "processing"
        for dts in ts.dependencies:
            self._drop_waiter(dts, ts, recs)
        for cs in ts.who_wants:
            self._out.append(ToClient(cs.client_id, _key_in_memory(ts)))
        if not ts.who_wants and not ts.waiters:
            recs[ts] = "released"

    def _drop_waiter(self, dts: TaskState, ts: TaskState, recs: dict[TaskState, str]) -> None:
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

    def _t_waiting_memory(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        # A result arrived for a task we were (re)waiting on: accept it.
        if not ts.who_has:
            raise InvalidTransition(f"{ts.key!r} cannot be in memory with no holder")
        for dts in ts.waiting_on:
            dts.waiters.discard(ts)
        ts.waiting_on = NO_TASKS
        self.unrunnable.discard(ts)
        ts.state = "memory"
        self._became_memory(ts, recs)

    def _t_released_memory(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        if not ts.who_has:
            raise InvalidTransition(f"{ts.key!r} cannot be in memory with no holder")
        ts.state = "memory"
        self._became_memory(ts, recs)

    def _t_memory_released(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
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

    def _t_processing_released(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        ws = self._leave_processing(ts)
        if ws is not None and ts.state == "processing":
            self._out.append(ToWorker(ws.address, FreeKeys(keys=[ts.key])))
        self._to_released(ts, recs)

    def _to_released(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        for dts in ts.dependencies:
            self._drop_waiter(dts, ts, recs)
        ts.waiting_on = NO_TASKS
        ts.state = "released"
        if ts.who_wants or ts.waiters:
            recs[ts] = "waiting"
        elif not ts.dependents:
            recs[ts] = "forgotten"

    def _t_waiting_released(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        self._to_released(ts, recs)

    def _t_noworker_released(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        self.unrunnable.discard(ts)
        self._to_released(ts, recs)

    def _t_processing_erred(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        ws = self._leave_processing(ts)
        if ws is not None and ws.address in self.workers:
            # The scheduler keeps the exception; the worker can forget the task.
            self._out.append(ToWorker(ws.address, FreeKeys(keys=[ts.key])))
        self._to_erred(ts, recs)

    def _to_erred(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        for dts in ts.dependencies:
            self._drop_waiter(dts, ts, recs)
        ts.waiting_on = NO_TASKS
        for ws in list(ts.who_has):
            self._remove_replica(ts, ws)
            self._out.append(ToWorker(ws.address, FreeKeys(keys=[ts.key])))
        ts.state = "erred"
        blame = ts.exception_blame or ts
        for dts in ts.dependents:
            if dts.state in ("waiting", "no-worker", "processing", "released") and (dts.who_wants or dts.waiters or dts.state != "released"):
                dts.exception_blame = blame
                recs[dts] = "erred"
        self._report_erred(ts, ts.who_wants)
        if not ts.who_wants and not ts.waiters and not ts.dependents:
            recs[ts] = "forgotten"

    def _t_waiting_erred(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        self._to_erred(ts, recs)

    def _t_noworker_erred(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        self.unrunnable.discard(ts)
        self._to_erred(ts, recs)

    def _t_released_erred(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        self._to_erred(ts, recs)

    def _t_memory_erred(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
        self._to_erred(ts, recs)

    def _t_erred_released(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
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

    def _t_to_forgotten(self, ts: TaskState, recs: dict[TaskState, str]) -> None:
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

    def _flush_unrunnable(self, recs: dict[TaskState, str]) -> None:
        if self._pending_unrunnable:
            for t in self._pending_unrunnable:
                # setdefault: a task already headed elsewhere in this event
                # (released because nothing wants it any more) must not be
                # sent to run instead.
                if t.state == "no-worker":
                    recs.setdefault(t, "processing")
            self._pending_unrunnable.clear()

    # ------------------------------------------------------------ checking

    def validate(self) -> None:
        """Check every invariant; raise AssertionError naming the broken one."""
        counts = dict.fromkeys(ALL_STATES[:-1], 0)
        for key, ts in self.tasks.items():
            assert ts.key == key, (key, ts)
            assert ts.state in ALL_STATES[:-1], f"{ts!r} in unknown state"
            counts[ts.state] += 1
            for dts in ts.dependencies:
                assert dts.key in self.tasks, f"{ts!r} depends on forgotten {dts!r}"
                assert ts in dts.dependents, f"{ts!r} not among dependents of {dts!r}"
            for dts in ts.dependents:
                assert dts.key in self.tasks, f"{ts!r} has forgotten dependent {dts!r}"
                assert ts in dts.dependencies
            for cs in ts.who_wants:
                assert ts in cs.wants_what, (ts, cs)
                assert cs.client_id in self.clients, (ts, cs)
            for ws in ts.who_has:
                assert ts in ws.has_what, (ts, ws)
                assert self.workers.get(ws.address) is ws, f"{ts!r} held by removed {ws!r}"
            if ts.state == "memory":
                assert ts.who_has, f"{ts!r} in memory with no holder"
                assert ts.processing_on is None
                assert not ts.waiting_on
            else:
                assert not ts.who_has, f"{ts!r} has holders but is {ts.state}"
            if ts.state == "processing":
                pws = ts.processing_on
                assert pws is not None and ts in pws.processing, ts
                # The very object: a worker back on the same address is new.
                assert self.workers.get(pws.address) is pws, f"{ts!r} processing on removed {pws!r}"
                for dts in ts.dependencies:
                    assert dts.who_has, f"{ts!r} processing while {dts!r} has no data"
                assert not ts.waiting_on
            else:
                assert ts.processing_on is None, ts
            if ts.state == "waiting":
                assert ts.runnable
                for dts in ts.waiting_on:
                    assert not dts.who_has, (ts, dts)
                    assert ts in dts.waiters, (ts, dts)
                    assert dts.state in ("waiting", "no-worker", "queued", "processing", "released"), (ts, dts)
                for dts in ts.dependencies:
                    if not dts.who_has:
                        assert dts in ts.waiting_on, (ts, dts)
            if ts.state == "no-worker":
                assert ts in self.unrunnable
                for dts in ts.dependencies:
                    assert dts.who_has, (ts, dts)
            else:
                assert ts not in self.unrunnable, ts
            for dts in ts.waiters:
                assert dts.state in ("waiting", "no-worker", "processing"), f"{dts!r} waits on {ts!r}"
                assert ts in dts.dependencies
            if ts.state in ("waiting", "no-worker", "queued", "processing"):
                assert ts.who_wants or ts.waiters, f"{ts!r} is active but nothing wants it"
            if ts.state == "queued":
                assert ts in self.queued and not ts.dependencies, ts
            else:
                assert ts not in self.queued, ts
            if ts.state in ("released", "erred", "memory") and not ts.who_wants and not ts.waiters:
                if ts.state == "memory":
                    raise AssertionError(f"{ts!r} in memory but unwanted")
                if not ts.dependents:
                    raise AssertionError(f"{ts!r} should have been forgotten")
        assert counts == self.task_counts, (counts, self.task_counts)
        assert not self._to_run and not self._maybe_unwanted and not self._pending_unrunnable
        for ts in self.stealing:
            assert ts.state == "processing" and ts.key in self.tasks, ts
        if self.queued:
            # Queued tasks wait only while every running worker is saturated.
            assert not any(w.status == "running" and not self._saturated(w) for w in self.workers.values()), "queued tasks while a worker has room"
        for address, ws in self.workers.items():
            assert ws.address == address
            for ts in ws.processing:
                assert ts.processing_on is ws and ts.state == "processing", (ws, ts)
            for ts in ws.has_what:
                assert ws in ts.who_has, (ws, ts)
            for name, used in ws.used_resources.items():
                assert used >= -1e-9, (ws, name, used)
                assert used <= ws.resources.get(name, 0) + 1e-9, (ws, name, used)
        for cs in self.clients.values():
            for ts in cs.wants_what:
                assert cs in ts.who_wants and ts.key in self.tasks, (cs, ts)


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
    AddWorker: SchedulerState._add_worker,
    RemoveWorker: SchedulerState._remove_worker,
    AddClient: SchedulerState._add_client,
    RemoveClient: SchedulerState._remove_client,
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

S = SchedulerState
TRANSITIONS: dict[tuple[str, str], Any] = {
    ("released", "waiting"): S._t_released_waiting,
    ("released", "memory"): S._t_released_memory,
    ("released", "erred"): S._t_released_erred,
    ("released", "forgotten"): S._t_to_forgotten,
    ("waiting", "processing"): S._t_waiting_processing,
    ("waiting", "released"): S._t_waiting_released,
    ("waiting", "memory"): S._t_waiting_memory,
    ("waiting", "erred"): S._t_waiting_erred,
    ("no-worker", "processing"): S._t_noworker_processing,
    ("queued", "released"): S._t_queued_released,
    ("no-worker", "released"): S._t_noworker_released,
    ("no-worker", "memory"): S._t_waiting_memory,
    ("no-worker", "erred"): S._t_noworker_erred,
    ("processing", "memory"): S._t_processing_memory,
    ("processing", "released"): S._t_processing_released,
    ("processing", "erred"): S._t_processing_erred,
    # A retry: release (which sends the task back to waiting while it is
    # wanted).  This was a lambda calling ``S.…``, a NameError once ``S`` is
    # deleted below, so every retry crashed the scheduler.
    ("processing", "waiting"): S._t_processing_released,
    ("processing-lost", "released"): S._t_processing_released,
    ("processing-lost", "erred"): S._t_processing_erred,
    ("memory", "released"): S._t_memory_released,
    ("memory", "erred"): S._t_memory_erred,
    ("erred", "released"): S._t_erred_released,
    ("erred", "forgotten"): S._t_to_forgotten,
}
del S
