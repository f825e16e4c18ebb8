"""What happens to a worker: the state machine's inputs.

One rule for names: every event class ends in ``Event``.  Events come from
the scheduler (:class:`ComputeTaskEvent`, :class:`FreeKeysEvent`, ...), from
the executor (:class:`ExecuteSuccessEvent`, :class:`ExecuteFailureEvent`,
:class:`ExecuteRescheduleEvent`), from tasks themselves
(:class:`SecedeEvent`, :class:`RejoinEvent`),
from transfers (:class:`GatherDepDoneEvent`, :class:`GatherDepFailedEvent`),
from clients (:class:`DataPutEvent`), from the memory monitor
(:class:`MemorySampleEvent`; :class:`PauseEvent` directly) and from the clock (:class:`SchedulerTimerEvent`).
Times are the shell's: the machine never reads a clock.

:class:`InvalidWorkerEvent` (defined here) is what
:meth:`~trioflow.worker.state.WorkerState.handle` raises for an event that
does not fit; the state is then unchanged.
"""

from __future__ import annotations

from ...errors import InvalidWorkerEvent
from ...protocol.messages import ComputeTask
from ...protocol.serialize import Serialized
from ...records import Record, record

__all__ = [
    "AcquireReplicasEvent",
    "ComputeTaskEvent",
    "DataPutEvent",
    "Event",
    "ExecuteFailureEvent",
    "ExecuteRescheduleEvent",
    "ExecuteSuccessEvent",
    "FreeKeysEvent",
    "GatherDepDoneEvent",
    "GatherDepFailedEvent",
    "HeartbeatAckEvent",
    "InvalidWorkerEvent",
    "MemorySampleEvent",
    "PauseEvent",
    "RegisteredEvent",
    "RejoinEvent",
    "SchedulerTimerEvent",
    "SecedeEvent",
    "StealRequestEvent",
]


@record(kw_only=True)
class ComputeTaskEvent(Record):
    """The scheduler sends a task to compute here."""

    msg: ComputeTask


@record(kw_only=True)
class FreeKeysEvent(Record):
    """The scheduler no longer needs these keys here."""

    keys: list[str]


@record(kw_only=True)
class ExecuteSuccessEvent(Record):
    """A run returned a value (stored by the shell if the run is current)."""

    key: str
    nbytes: int
    type_name: str
    start: float
    stop: float
    thread: int = 0


@record(kw_only=True)
class ExecuteFailureEvent(Record):
    """A run raised."""

    key: str
    exception: Serialized | None
    exception_text: str
    traceback_text: str
    type_name: str
    start: float = 0.0
    stop: float = 0.0
    thread: int = 0


@record(kw_only=True)
class GatherDepDoneEvent(Record):
    """A transfer from a peer came back."""

    worker: str
    nbytes: dict[str, int]  # keys received, with sizes
    missing: list[str]  # keys the peer did not have


@record(kw_only=True)
class GatherDepFailedEvent(Record):
    """A transfer from a peer failed (the peer is likely gone)."""

    worker: str
    keys: list[str]


@record(kw_only=True)
class DataPutEvent(Record):
    """Values put here directly (scatter); the client tells the scheduler."""

    nbytes: dict[str, int]


@record(kw_only=True)
class PauseEvent(Record):
    """Memory crossed the pause threshold (``paused``) or came back under."""

    paused: bool


@record(kw_only=True)
class MemorySampleEvent(Record):
    """The memory monitor measured the process at ``rss`` bytes; it pauses
    at ``pause_at`` bytes (the worker's setting)."""

    rss: int
    pause_at: float


@record(kw_only=True)
class StealRequestEvent(Record):
    """The scheduler wants to move a task elsewhere, if it has not started."""

    key: str


@record(kw_only=True)
class AcquireReplicasEvent(Record):
    """The scheduler wants copies of keys it holds elsewhere."""

    who_has: dict[str, list[str]]
    nbytes: dict[str, int]


@record(kw_only=True)
class RegisteredEvent(Record):
    """The scheduler accepted our registration at time ``now``, with the
    heartbeat period and time-to-live it keeps for us, and the keys we
    reported holding that it does not want (``forget``)."""

    now: float
    heartbeat_interval: float
    worker_ttl: float
    forget: list[str]


@record(kw_only=True)
class HeartbeatAckEvent(Record):
    """The scheduler acknowledged a heartbeat, with its current settings."""

    heartbeat_interval: float
    worker_ttl: float


@record(kw_only=True)
class SchedulerTimerEvent(Record):
    """The liveness timer fired at ``now``: is the scheduler silent too long?"""

    now: float


@record(kw_only=True)
class ExecuteRescheduleEvent(Record):
    """A run raised :class:`~trioflow.errors.Reschedule`: the scheduler is
    to place the task again."""

    key: str


@record(kw_only=True)
class SecedeEvent(Record):
    """The run of ``key`` left the executor's pool (``secede()`` in the
    task): its thread waits on something else, and its slot is free for
    another task."""

    key: str


@record(kw_only=True)
class RejoinEvent(Record):
    """The seceded run of ``key`` wants a slot again (``rejoin()``): it is
    granted (:class:`~.instructions.GrantRejoin`) as soon as one is free,
    before any ready task starts."""

    key: str


Event = (
    ComputeTaskEvent
    | FreeKeysEvent
    | ExecuteSuccessEvent
    | ExecuteFailureEvent
    | GatherDepDoneEvent
    | GatherDepFailedEvent
    | DataPutEvent
    | PauseEvent
    | MemorySampleEvent
    | StealRequestEvent
    | AcquireReplicasEvent
    | RegisteredEvent
    | HeartbeatAckEvent
    | SchedulerTimerEvent
    | SecedeEvent
    | RejoinEvent
    | ExecuteRescheduleEvent
)
