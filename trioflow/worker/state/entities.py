"""What the worker's state machine holds: its tasks and its own record.

:class:`WorkerTask` is one key known on this worker (a task to run, or a
dependency to fetch); :class:`WorkerStateRecord` is every field of the
machine, documented here once.  The behaviour lives in the other files of
this package; nothing here changes state beyond a constructor.
"""

from __future__ import annotations

import sys
from typing import Final, Literal, get_args

from ...keys import key_prefix
from ...protocol.serialize import Serialized
from .instructions import Instruction

__all__ = [
    "PREFETCH_BELOW",
    "PREFETCH_HORIZON",
    "MEMORY_RESUME_FRACTION",
    "PREFETCH_MAX",
    "WORKER_STATES",
    "ReadyEntry",
    "TaskStateName",
    "WorkerStateRecord",
    "WorkerTask",
]

#: A task's state on a worker (see the table in :mod:`trioflow.worker.state`).
#: ``new`` only between creation and the first transition; ``dropped`` and
#: ``forgotten`` only on a task object no longer in ``WorkerState.tasks``
#: (``dropped``: its entry in the ready heap is stale and skipped).
TaskStateName = Literal["new", "waiting", "ready", "executing", "memory", "erred", "fetch", "flight", "dropped", "forgotten"]
#: The states a task in ``WorkerState.tasks`` may be in.
LiveStateName = Literal["waiting", "ready", "executing", "memory", "erred", "fetch", "flight"]
WORKER_STATES: Final[tuple[LiveStateName, ...]] = get_args(LiveStateName)

#: Tasks measured shorter than this (seconds, per key prefix) may be handed
#: to the executor ahead of a free thread ...
PREFETCH_BELOW = 0.005
#: ... as many as make this much work per thread (at least one per thread and
#: two in all, at most PREFETCH_MAX per thread): microsecond tasks queue deep,
#: so an executor thread runs a run of them per wake-up (a 20,000-task no-op
#: map: worker CPU per task 50 -> 33 µs).
PREFETCH_HORIZON = 0.002
PREFETCH_MAX = 16
#: Paused for memory, the worker resumes below this fraction of its pause
#: threshold (hysteresis: no flapping around the threshold).
MEMORY_RESUME_FRACTION = 0.9


class WorkerTask:
    """One key known to this worker: a task to compute, or a dependency held
    or to be fetched.  Hashed by key, compared by identity."""

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
        #: The task's key.
        self.key = key
        self._hash = hash(key)
        #: Its key prefix (interned): run times are measured per prefix.
        self.prefix = sys.intern(key_prefix(key))
        #: See :data:`TaskStateName`.
        self.state: TaskStateName = "new"
        #: The pickled function (tasks to compute only).
        self.function: bytes | None = None
        #: The serialized arguments (tasks to compute only).
        self.args: Serialized | None = None
        #: The scheduler's priority: lower runs first.
        self.priority: tuple[int, int, int] = (0, 0, 0)
        #: Tasks whose values this one's run takes.
        self.dependencies: set[WorkerTask] = set()
        #: Local tasks that take this one's value.
        self.dependents: set[WorkerTask] = set()
        #: Dependencies not in memory here yet ('waiting' until empty).
        self.waiting_for: set[WorkerTask] = set()
        #: Peers to fetch the key from, in the order to try them.
        self.who_has: list[str] = []
        #: The peer a transfer of the key is under way from ('flight').
        self.coming_from = ""
        #: Its size in bytes, once known (a guess from the scheduler before).
        self.nbytes = 0
        #: The scheduler wants the key here; False once it freed it (kept
        #: only as a dependency of local tasks).
        self.wanted = True
        #: Freed while executing or in flight: drop the value when it comes.
        self.cancelled = False
        #: Executing, and the scheduler asked for a copy (AcquireReplicas):
        #: if the run gives none, fetch it from ``who_has``.
        self.replica = False
        #: Resources its run holds (names to amounts).
        self.resources: dict[str, float] = {}

    # Hash by key, not id(): set order decides which task becomes ready first
    # (and so runs first), and must not change between runs of the same
    # events.  Equality stays identity.
    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"<WorkerTask {self.key!r} {self.state}>"


#: An entry of the ready heap: (priority, sequence number, task).
ReadyEntry = tuple[tuple[int, int, int], int, WorkerTask]


class WorkerStateRecord:
    """Every field of the worker's state machine, and the read-only views of
    them the shell uses.  :class:`~trioflow.worker.state.WorkerState` adds
    the behaviour."""

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
        prefetch_max: int = PREFETCH_MAX,
        prefetch_horizon: float = PREFETCH_HORIZON,
        prefetch_below: float = PREFETCH_BELOW,
        memory_resume_fraction: float = MEMORY_RESUME_FRACTION,
    ) -> None:
        #: This worker's contact address (never a peer to fetch from).
        self.address = address
        #: Executor threads: runs started without a prefetch condition.
        self.nthreads = nthreads
        #: Prefetch tuning (``worker.prefetch_*`` of trioflow.config; the
        #: module constants are the defaults): per thread at most
        #: ``prefetch_max`` runs, about ``prefetch_horizon`` seconds of
        #: them, of tasks measured shorter than ``prefetch_below``.
        self.prefetch_max = prefetch_max
        self.prefetch_horizon = prefetch_horizon
        self.prefetch_below = prefetch_below
        #: Resume below this fraction of the pause threshold.
        self.memory_resume_fraction = memory_resume_fraction
        #: Runs the executor may hold at once, prefetched ones included.
        self.slots = nthreads + (prefetch if prefetch is not None else prefetch_max * nthreads)
        #: Run time per key prefix (moving average), for prefetching.
        self.durations: dict[str, float] = {}
        #: Resources this worker has (names to amounts) ...
        self.total_resources = dict(resources or {})
        #: ... and those not held by a run right now.
        self.available_resources = dict(self.total_resources)
        #: Every key known here.
        self.tasks: dict[str, WorkerTask] = {}
        #: Heap of tasks ready to run (entries of dropped tasks go lazily).
        self.ready: list[ReadyEntry] = []
        #: Ready tasks whose resources were taken when their turn came: back
        #: into ``ready`` whenever a running task gives resources back.
        self.constrained: list[ReadyEntry] = []
        #: Tasks handed to the executor whose outcome is wanted.
        self.executing: set[WorkerTask] = set()
        #: Runs whose key was put here (scatter) while they ran: key -> the
        #: resources they hold until their thread returns.  Their results
        #: are dropped.
        self.superseded: dict[str, dict[str, float]] = {}
        #: Keys of runs that left the executor's pool (secede): they hold no
        #: slot (``n_executing`` leaves them out) until rejoined.
        self.seceded: set[str] = set()
        #: Seceded runs waiting for a slot to rejoin, first come first served.
        self.rejoining: list[str] = []
        #: Dependencies to fetch, grouped by the peer chosen for each.
        self.fetch_by_worker: dict[str, dict[WorkerTask, None]] = {}
        #: Transfers under way: peer -> the keys asked of it.
        self.in_flight_workers: dict[str, set[WorkerTask]] = {}
        #: Bytes asked of one peer in one request at most (but one key always).
        self.max_transfer_bytes = max_transfer_bytes
        #: Peers fetched from at once at most.
        self.max_concurrent_fetches = max_concurrent_fetches
        #: No new run starts while paused (memory over its pause threshold).
        self.paused = False
        #: Check every invariant after each event (tests).
        self.validate_after_each = validate
        #: Bytes of the keys in memory here, by the sizes known.
        self.nbytes_in_memory = 0
        #: Runs that returned (successes, failures, superseded runs).
        self.executed_count = 0
        #: Heartbeat period the scheduler asks for (set at registration).
        self.heartbeat_interval = 1.0
        #: The scheduler drops us after this long without a heartbeat; we
        #: give up on a silent scheduler after about as long (set at
        #: registration, refreshed by every heartbeat acknowledgement).
        self.scheduler_ttl = 10.0
        #: When (the shell's clock) the scheduler last said anything: the
        #: shell writes it for every message received.
        self.scheduler_heard_at = 0.0
        self._seq = 0  # ready-heap tie breaker: first come, first served
        self._out: list[Instruction] = []  # instructions of the event in hand
        self._pending_add_keys: dict[str, int] = {}  # AddKeys at the end of the event
        self._pending_release: list[str] = []  # ReleaseWorkerData at the end
        self._freeing = False  # inside a FreeKeys: drops are the scheduler's
        self._erred_now: list[str] = []  # keys that erred in the event in hand

    def is_current_run(self, key: str) -> bool:
        """Whether the result of a run of ``key`` that just returned is
        wanted, i.e. the shell must store it before handing the
        ExecuteSuccessEvent over.  Not for a superseded run (its key got a
        value put meanwhile), nor for one this state never started (a new
        state after a reconnect); the event for the former is still due."""
        ts = self.tasks.get(key)
        return ts is not None and ts.state == "executing"

    def takes_fetched_value(self, key: str) -> bool:
        """Whether the shell is to store a value of ``key`` that a transfer
        brought: not over a value in memory here (put here meanwhile, it
        wins)."""
        ts = self.tasks.get(key)
        return ts is None or ts.state != "memory"

    @property
    def n_executing(self) -> int:
        """Runs holding an executor slot, superseded ones included."""
        return len(self.executing) + len(self.superseded) - len(self.seceded)

    @property
    def n_ready(self) -> int:
        """Tasks waiting for a thread (less some dropped ones not cleared yet)."""
        return len(self.ready) + len(self.constrained)

    @property
    def in_memory(self) -> list[str]:
        return [k for k, t in self.tasks.items() if t.state == "memory"]

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = dict.fromkeys(WORKER_STATES, 0)
        for t in self.tasks.values():
            c[t.state] = c.get(t.state, 0) + 1
        return c
