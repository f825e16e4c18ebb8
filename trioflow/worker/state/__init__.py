"""The worker's state machine: which task runs next, what to fetch, no IO.

Theory of operation
-------------------
:class:`WorkerState` takes events (the scheduler sent a task, an execution
finished, a fetch from a peer came back) through :meth:`WorkerState.handle`
and returns instructions for the shell in :mod:`trioflow.worker.server`:
:class:`Execute` a task, :class:`GatherDep` from a peer, :class:`SendMsg` to
the scheduler, :class:`DropData` from the local store, :class:`ReportPause`
(memory), :class:`DisconnectScheduler` (silent too long), :class:`GrantRejoin`
(a seceded run gets a slot back).  It holds keys and sizes, never the
values: the shell owns the data store, the threads and the sockets.  No trio import, no clock reads: events that need the time
carry it (:class:`RegisteredEvent`, :class:`SchedulerTimerEvent`).  Every
decision is made here; the shell measures, moves bytes and carries out.

A run may leave its slot while it waits (``secede()`` in the task,
:class:`SecedeEvent`): it stays 'executing' but is counted out of
``n_executing`` (``seceded``) until it asks back (:class:`RejoinEvent`) and
a slot is free; rejoining runs get slots before ready tasks.

Task states on a worker:

==========  ============================================================
waiting     sent by the scheduler; some dependencies are not here yet
ready       all dependencies here; queued by priority for a thread (or
            set aside until the resources it needs are released)
executing   handed to the executor
memory      the value is in the local store
erred       execution raised; the scheduler has been told (then the
            task is forgotten: the scheduler never frees it here)
fetch       a dependency to get from a peer (``who_has`` says where)
flight      a dependency being transferred right now (``coming_from``)
==========  ============================================================

Data put here directly (scatter) is authoritative.  Put over a key that is
being executed, it is in memory at once; the run goes on (a thread cannot be
stopped) as a *superseded* run that keeps its executor slot and resources
until it returns, and its result is dropped: the shell stores a result only
for a task still 'executing' (:meth:`WorkerState.is_current_run`).  Should
the key be sent here to compute again meanwhile, that run is taken up as the
task's own rather than started a second time.

Where things are
----------------
=====================  =================================================
:mod:`.entities`       :class:`WorkerTask`, the machine's fields (each
                       documented), the state names (:data:`TaskStateName`)
:mod:`.events`         the inputs (every name ends in ``Event``) and
                       :class:`InvalidWorkerEvent`
:mod:`.instructions`   the outputs
:mod:`.transitions`    the tables: event type -> handler, state -> next
:mod:`.fetching`       holding, dropping, fetching and gathering keys
:mod:`.execution`      tasks to compute, runs, resources, prefetch
:mod:`.link`           registration, scheduler settings and liveness
:mod:`.validation`     the invariants
:mod:`.machine`        :class:`WorkerState`: ``handle`` and ``handle_many``
=====================  =================================================
"""

from .entities import (
    MEMORY_RESUME_FRACTION,
    PREFETCH_BELOW,
    PREFETCH_HORIZON,
    PREFETCH_MAX,
    WORKER_STATES,
    TaskStateName,
    WorkerStateRecord,
    WorkerTask,
)
from .events import (
    AcquireReplicasEvent,
    ComputeTaskEvent,
    DataPutEvent,
    Event,
    ExecuteFailureEvent,
    ExecuteRescheduleEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDepDoneEvent,
    GatherDepFailedEvent,
    HeartbeatAckEvent,
    InvalidWorkerEvent,
    MemorySampleEvent,
    PauseEvent,
    RegisteredEvent,
    RejoinEvent,
    SchedulerTimerEvent,
    SecedeEvent,
    StealRequestEvent,
)
from .instructions import (
    DisconnectScheduler,
    DropData,
    Execute,
    GatherDep,
    GrantRejoin,
    Instruction,
    ReportPause,
    SendMsg,
)
from .machine import WorkerState
from .transitions import HANDLERS, TRANSITIONS

__all__ = [
    "HANDLERS",
    "TRANSITIONS",
    "MEMORY_RESUME_FRACTION",
    "PREFETCH_BELOW",
    "PREFETCH_HORIZON",
    "PREFETCH_MAX",
    "WORKER_STATES",
    "AcquireReplicasEvent",
    "ComputeTaskEvent",
    "DataPutEvent",
    "DisconnectScheduler",
    "DropData",
    "Event",
    "Execute",
    "ExecuteFailureEvent",
    "ExecuteRescheduleEvent",
    "ExecuteSuccessEvent",
    "FreeKeysEvent",
    "GatherDep",
    "GatherDepDoneEvent",
    "GatherDepFailedEvent",
    "GrantRejoin",
    "HeartbeatAckEvent",
    "Instruction",
    "InvalidWorkerEvent",
    "MemorySampleEvent",
    "PauseEvent",
    "RegisteredEvent",
    "RejoinEvent",
    "ReportPause",
    "SchedulerTimerEvent",
    "SecedeEvent",
    "SendMsg",
    "StealRequestEvent",
    "TaskStateName",
    "WorkerState",
    "WorkerStateRecord",
    "WorkerTask",
]
