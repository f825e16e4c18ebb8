"""The transition tables, as data: which handler each event goes to, and
which state a task may go to from which.

Every event type maps to exactly one method of the machine
(:data:`HANDLERS`); those methods change task states and add instructions.
:meth:`WorkerState.handle <trioflow.worker.state.WorkerState.handle>` looks
the event's type up here: an event type missing from this table is a
``KeyError``, never silently ignored.

:data:`TRANSITIONS` lists every change of a task's state the handlers
make, one step at a time.  It is not consulted on the hot path; the tests
check every assignment against it (``tests/test_worker_state.py``), so a
new transition is one that was added here on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .entities import TaskStateName
from .events import (
    AcquireReplicasEvent,
    ComputeTaskEvent,
    DataPutEvent,
    ExecuteFailureEvent,
    ExecuteRescheduleEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDepDoneEvent,
    GatherDepFailedEvent,
    HeartbeatAckEvent,
    MemorySampleEvent,
    PauseEvent,
    RegisteredEvent,
    RejoinEvent,
    SchedulerTimerEvent,
    SecedeEvent,
    StealRequestEvent,
)
from .execution import Execution
from .fetching import Fetching
from .link import SchedulerLink

__all__ = ["HANDLERS", "TRANSITIONS"]

#: Event type -> the machine's method that applies it (called with the
#: machine and the event).
HANDLERS: Final[dict[type, Callable[[Any, Any], None]]] = {
    # from the scheduler
    ComputeTaskEvent: Execution._compute_task,
    FreeKeysEvent: Fetching._free_keys,
    StealRequestEvent: Execution._steal_request,
    AcquireReplicasEvent: Fetching._acquire_replicas,
    RegisteredEvent: SchedulerLink._registered,
    HeartbeatAckEvent: SchedulerLink._heartbeat_ack,
    # from the executor
    ExecuteSuccessEvent: Execution._execute_success,
    ExecuteFailureEvent: Execution._execute_failure,
    ExecuteRescheduleEvent: Execution._execute_reschedule,
    SecedeEvent: Execution._secede,
    RejoinEvent: Execution._rejoin,
    # from transfers
    GatherDepDoneEvent: Fetching._gather_done,
    GatherDepFailedEvent: Fetching._gather_failed,
    # from clients, the memory monitor, the clock
    DataPutEvent: Execution._data_put,
    PauseEvent: Execution._pause,
    MemorySampleEvent: Execution._memory_sample,
    SchedulerTimerEvent: SchedulerLink._scheduler_timer,
}


def _to(*states: TaskStateName, ends: bool = True) -> frozenset[TaskStateName]:
    return frozenset((*states, "forgotten") if ends else states)


#: Task state -> the states a handler may move it to in one step.  Every
#: live state may also end ("forgotten"; a ready task "dropped", its heap
#: entry then skipped).  A value put here (DataPutEvent) wins over any
#: state an event can find (an erred task is forgotten at the end of the
#: event it erred in); a task sent to compute leaves a fetch behind.
TRANSITIONS: Final[dict[TaskStateName, frozenset[TaskStateName]]] = {
    # created: sent to compute, needed as a dependency, asked for as a
    # replica, or put here
    "new": _to("waiting", "ready", "executing", "fetch", "memory"),
    "waiting": _to("ready", "fetch", "memory"),
    "ready": _to("executing", "fetch", "memory", "dropped"),
    # (to fetch: a stale run failed while the key is needed here)
    "executing": _to("memory", "erred", "fetch"),
    "memory": _to(),
    "erred": _to("fetch"),  # (forgotten at the end of the event it erred in)
    "fetch": _to("flight", "waiting", "ready", "executing", "memory"),
    "flight": _to("memory", "fetch", "waiting", "ready", "executing"),
    "dropped": _to(ends=False),
    "forgotten": _to(ends=False),
}
