"""What the scheduler knows: tasks, workers and clients, and the task states.

The three entity classes are plain slotted objects linked to each other (a
task points at the workers holding it, a worker at the tasks it holds, and so
on); :class:`~.machine.SchedulerState` keeps both sides of every link in step
and :meth:`~.validation.ValidationLayer.validate` checks that it does.  They
carry data only: every decision is made in the layers of the state machine.

Memory matters here: a large graph holds millions of :class:`TaskState`, so
rarely filled sets share one empty value (:data:`NO_TASKS`) and the priority
is packed into one int (:func:`pack_priority`).
"""

from __future__ import annotations

import sys
from typing import Any, Literal, get_args

from ...keys import key_prefix
from ...protocol.serialize import Serialized

__all__ = [
    "ALL_STATES",
    "ClientState",
    "NO_RESOURCES",
    "NO_TASKS",
    "NO_WORKERS",
    "Recommendations",
    "Restart",
    "Retirement",
    "TaskState",
    "TaskStateName",
    "WorkerState",
    "WorkerStatus",
    "pack_priority",
    "unpack_priority",
]

#: A task's state, as a value mypy can check (see the table in the package
#: docstring).  On the wire and in ``task_counts`` these are plain strings.
TaskStateName = Literal["released", "waiting", "no-worker", "queued", "processing", "memory", "erred", "forgotten"]

#: The one state that exists only inside a single event: a task that was
#: processing on a worker that has just been removed.  ``_remove_worker``
#: sets it (``processing_on`` already cleared) and recommends 'released' or
#: 'erred' in the same cascade, so it is never seen between events (and
#: ``validate`` rejects it).  It differs from 'processing' on purpose: a
#: transition that sees a dependent 'processing' takes the run back from its
#: worker, which is wrong for a run whose worker is gone and whose own
#: recommendation (erred by ``KilledWorker``, or released to run again) must
#: stand.  It counts as 'processing' in ``task_counts``.
TransientStateName = Literal["processing-lost"]

ALL_STATES: tuple[TaskStateName, ...] = get_args(TaskStateName)

#: A worker's scheduling status.  Only 'running' workers get new tasks:
#: 'paused' ones are under memory pressure (their heartbeats say so and
#: undo it), 'retiring' ones have their data copied away, and 'closing'
#: ones were told to close or are being removed.
WorkerStatus = Literal["running", "paused", "retiring", "closing"]


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
    """One key the scheduler knows: its run spec, its place in the graph,
    where it runs or is held, who wants it, and how it failed.

    Entities hash by name, not by ``id()``: the order in which a set of them
    iterates decides which transition runs first and which worker wins a tie,
    and with ``id()`` hashes that order changed from run to run, so the same
    events could lead to different decisions (and a failure found by the
    stateful tests could not be replayed).  Equality stays identity.  A str
    caches its hash, so this costs a call, not a rehash.
    """

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
        #: The task's key (its name in the graph and on the wire).
        self.key = key
        #: The key's prefix (``"inc"`` for ``"inc-1f3a"``), interned: one
        #: string per prefix, not one per task.  Durations are kept per prefix.
        self.prefix = sys.intern(key_prefix(key))
        #: The pickled function, or None for data with no run spec (scattered).
        self.function = function
        #: The serialized arguments, None with ``function``.
        self.args = args
        #: Tasks whose results this one needs.
        self.dependencies: set[TaskState] = NO_TASKS
        #: Tasks that need this one's result.
        self.dependents: set[TaskState] = NO_TASKS
        #: Where the task is in its life (see :data:`TaskStateName`).
        self.state: TaskStateName | TransientStateName = "released"
        #: Order of running, smaller first (see :func:`pack_priority`).
        self.priority = 0
        #: Workers holding the result (only in 'memory').
        self.who_has: set[WorkerState] = set()
        #: The worker running it (only in 'processing').
        self.processing_on: WorkerState | None = None
        #: Dependencies whose results are not in memory yet ('waiting').
        self.waiting_on: set[TaskState] = NO_TASKS
        #: Dependents that still need this result: it is kept while any are.
        self.waiters: set[TaskState] = NO_TASKS
        #: Clients that want this result: it is kept while any do.
        self.who_wants: set[ClientState] = set()
        #: Size of the result in bytes, -1 while unknown.
        self.nbytes = -1
        #: The pickled exception the task raised (never unpickled here).
        self.exception: Serialized | None = None
        #: ``str()`` of the exception.
        self.exception_text = ""
        #: The formatted traceback.
        self.traceback_text = ""
        #: The exception's type name.
        self.type_name = ""
        #: The task whose error made this one err (None: its own error).
        self.exception_blame: TaskState | None = None
        #: Retries left after an error.
        self.retries = 0
        #: How many workers died while running it (see ``allowed_failures``).
        self.suspicious = 0
        #: Workers (addresses or names) it is restricted to, or preferred on.
        self.workers: frozenset[str] = NO_WORKERS
        #: ``workers`` is a preference, not a restriction.
        self.allow_other_workers = False
        #: Abstract resources one run uses (``{"GPU": 1}``).
        self.resources: dict[str, float] = NO_RESOURCES
        #: The worker that reported the error.
        self.erred_by = ""
        #: Type name of the result, as the worker reported it.
        self.result_type = ""
        #: Addresses of the workers that died running it, oldest first.
        self.died_on: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def runnable(self) -> bool:
        return self.function is not None

    def __repr__(self) -> str:
        return f"<TaskState {self.key!r} {self.state}>"


class WorkerState:
    """One worker connected to the scheduler: its capacity, what it runs,
    what it holds, and its status.  Hashes by address (see :class:`TaskState`)."""

    __slots__ = (
        "address",
        "name",
        "nthreads",
        "memory_limit",
        "resources",
        "used_resources",
        "processing",
        "long_running",
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
        #: Where the worker listens (its identity).
        self.address = address
        self._hash = hash(address)
        #: Its name, unique among the connected workers.
        self.name = name
        #: Threads it runs tasks on.
        self.nthreads = nthreads
        #: Bytes of memory it may use (0: no limit).
        self.memory_limit = memory_limit
        #: Abstract resources it has in all.
        self.resources = dict(resources)
        #: Resources the tasks sent to it use now.
        self.used_resources = {k: 0.0 for k in resources}
        #: Tasks sent to it -> their expected duration.
        self.processing: dict[TaskState, float] = {}
        #: Tasks in ``processing`` that left the worker's thread pool
        #: (secede): they occupy no thread, the root-task queue leaves them out.
        self.long_running: set[TaskState] = set()
        #: Results it holds (a dict as an insertion-ordered set).
        self.has_what: dict[TaskState, None] = {}
        #: Bytes of results it holds.
        self.nbytes = 0
        #: Seconds of expected work in ``processing``.
        self.occupancy = 0.0
        #: Address of its nanny, "" if it has none.
        self.nanny = ""
        #: Its process id.
        self.pid = 0
        #: Its scratch directory.
        self.local_directory = ""
        #: Ports of its extra services by name.
        self.services: dict[str, int] = {}
        #: The metrics of its last heartbeat.
        self.metrics: dict[str, Any] = {}
        #: Scheduler time of its last message (registration or heartbeat).
        self.last_seen = 0.0
        #: 'running', 'paused', 'retiring' or 'closing' (see :data:`WorkerStatus`).
        self.status: WorkerStatus = "running"

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"<WorkerState {self.address} {self.name!r} processing={len(self.processing)} has={len(self.has_what)}>"


class ClientState:
    """One client, and the keys it wants kept.  Hashes by id (see :class:`TaskState`)."""

    __slots__ = ("client_id", "wants_what", "_hash")

    def __init__(self, client_id: str) -> None:
        #: The id the client registered with.
        self.client_id = client_id
        #: Tasks whose results it wants.
        self.wants_what: set[TaskState] = set()
        self._hash = hash(client_id)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"<ClientState {self.client_id} wants={len(self.wants_what)}>"


class Retirement:
    """A retirement under way: the workers leaving, and the data only they
    hold that is being copied to the others."""

    __slots__ = ("request", "addresses", "pending", "deadline")

    def __init__(self, request: str, addresses: list[str], deadline: float) -> None:
        #: The request to answer when it is over.
        self.request = request
        #: The retiring workers, in the order asked.
        self.addresses = addresses
        #: Tasks in memory only on retiring workers, being copied elsewhere.
        self.pending: dict[TaskState, None] = {}
        #: Scheduler time after which the workers still holding the only copy
        #: of some data are not retired.
        self.deadline = deadline


class Restart:
    """A restart under way: the nannies asked to restart their workers."""

    __slots__ = ("request", "nannies", "answered", "failed", "deadline", "timeout")

    def __init__(self, request: str, nannies: list[str], deadline: float) -> None:
        #: The request to answer when it is over.
        self.request = request
        #: Nannies asked to restart their workers.
        self.nannies = nannies
        #: Nannies that answered (successfully or not).
        self.answered: set[str] = set()
        #: "nanny: error" for each nanny that failed.
        self.failed: list[str] = []
        #: Scheduler time by which the workers must be back.
        self.deadline = deadline
        #: The time allowed, for the error message.
        self.timeout = 0.0


#: What the transitions of one event are still to do: task -> the state it
#: should move to next.
Recommendations = dict[TaskState, TaskStateName]
