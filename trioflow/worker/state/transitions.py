"""The transition table: which handler each event goes to, as data.

Every event type maps to exactly one method of the machine; those methods
change task states (see the table in :mod:`trioflow.worker.state`) and add
instructions.  :meth:`WorkerState.handle
<trioflow.worker.state.WorkerState.handle>` looks the event's type up here:
an event type missing from this table is a ``KeyError``, never silently
ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .events import (
    AcquireReplicasEvent,
    ComputeTaskEvent,
    DataPutEvent,
    ExecuteFailureEvent,
    ExecuteSuccessEvent,
    FreeKeysEvent,
    GatherDepDoneEvent,
    GatherDepFailedEvent,
    HeartbeatAckEvent,
    MemorySampleEvent,
    PauseEvent,
    RegisteredEvent,
    SchedulerTimerEvent,
    StealRequestEvent,
)
from .execution import Execution
from .fetching import Fetching
from .link import SchedulerLink

__all__ = ["HANDLERS"]

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
    # from transfers
    GatherDepDoneEvent: Fetching._gather_done,
    GatherDepFailedEvent: Fetching._gather_failed,
    # from clients, the memory monitor, the clock
    DataPutEvent: Execution._data_put,
    PauseEvent: Execution._pause,
    MemorySampleEvent: Execution._memory_sample,
    SchedulerTimerEvent: SchedulerLink._scheduler_timer,
}
