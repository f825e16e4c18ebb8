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

These names are the :data:`~.entities.TaskStateName` ``Literal``, so mypy
checks what a state is compared with or set to; they stay plain strings on
the wire.  One more value exists only inside a single event,
'processing-lost' (see :data:`~.entities.TransientStateName`).

Transitions are a table, :data:`~.transitions.TRANSITIONS`, next to every
function in it (:mod:`.transitions`); asking for a pair that is not
in it raises :class:`InvalidTransition` before anything changes.  Events
from peers are checked before they mutate anything; a bad one raises
:class:`InvalidEvent` and leaves the state as it was.

Memory is reference counted through the graph: a task stays in memory while a
client wants it (``who_wants``) or a dependent still needs it (``waiters``);
when both are empty it is released, and once it has no dependents left either
it is forgotten.  Released tasks that still have dependents keep their run
spec, so lost results can be recomputed from lineage.

Placement (:meth:`SchedulerState.decide_worker`, :mod:`.placement`) picks, among the workers
allowed to run a task, the one where it would start earliest: the worker's
queued work (occupancy / threads) plus the time to fetch the dependency bytes
it does not hold.

The package's modules are its parts, each a layer of :class:`SchedulerState`
(every one a base class of the next, so a call between them costs nothing
extra): :mod:`.entities` (what is known), :mod:`.events` (what comes in and
what goes out), :mod:`.core` (the tables and shared bookkeeping),
:mod:`.placement`, :mod:`.queuing` (the root-task queue),
:mod:`.transitions`, :mod:`.stealing`, :mod:`.validation`,
:mod:`.membership` (workers and clients coming and going: registration,
liveness, retirement, restart, fire-and-forget) and :mod:`.machine`
(``handle`` and the other event handlers).  Its exceptions are all
imported from :mod:`trioflow.errors` through :mod:`.exceptions`.
"""

from __future__ import annotations

from .core import DEFAULT_BANDWIDTH, DEFAULT_DURATION, FIRE_AND_FORGET
from .entities import (
    ALL_STATES,
    NO_RESOURCES,
    NO_TASKS,
    NO_WORKERS,
    ClientState,
    Restart,
    Retirement,
    TaskState,
    TaskStateName,
    TransientStateName,
    WorkerState,
    WorkerStatus,
    pack_priority,
    unpack_priority,
)
from .events import (
    AddClientEvent,
    AddKeysEvent,
    AddWorkerEvent,
    CancelKeysEvent,
    DropWorker,
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
    RestartDone,
    RestartEvent,
    RestartNanny,
    RetirementDone,
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
from .exceptions import InvalidEvent, InvalidTransition, KilledWorker, LostData
from .machine import SchedulerState
from .placement import SAMPLE
from .queuing import QUEUE_HORIZON, QUEUE_SHORT_MAX
from .transitions import TRANSITIONS

__all__ = [
    "Retirement",
    "Restart",
    "FIRE_AND_FORGET",
    "TickEvent",
    "RetireWorkersEvent",
    "RetirementDone",
    "RestartNanny",
    "RestartEvent",
    "RestartDone",
    "NannyRestartedEvent",
    "FireAndForgetEvent",
    "DropWorker",
    "ALL_STATES",
    "DEFAULT_BANDWIDTH",
    "DEFAULT_DURATION",
    "NO_RESOURCES",
    "NO_TASKS",
    "NO_WORKERS",
    "QUEUE_HORIZON",
    "QUEUE_SHORT_MAX",
    "SAMPLE",
    "TRANSITIONS",
    "AddClientEvent",
    "AddKeysEvent",
    "AddWorkerEvent",
    "CancelKeysEvent",
    "ClientState",
    "Event",
    "HeartbeatEvent",
    "Instruction",
    "InvalidEvent",
    "InvalidTransition",
    "KilledWorker",
    "LostData",
    "MissingDataEvent",
    "ReleaseKeysEvent",
    "ReleaseWorkerDataEvent",
    "RemoveClientEvent",
    "RemoveWorkerEvent",
    "LongRunningEvent",
    "RescheduleEvent",
    "SchedulerState",
    "StealResponseEvent",
    "TaskErredEvent",
    "TaskFinishedEvent",
    "TaskState",
    "TaskStateName",
    "ToClient",
    "ToWorker",
    "TransientStateName",
    "UpdateDataEvent",
    "UpdateGraphEvent",
    "WorkerState",
    "WorkerStatus",
    "pack_priority",
    "unpack_priority",
]
