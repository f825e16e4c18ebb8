"""What goes into the state machine (events) and what comes out (instructions).

Every event class ends in ``Event``; the server builds them from the
messages of its peers (and from its clock: :class:`TickEvent`).  The
instructions name who to tell what; the server only carries them out.
"""

from __future__ import annotations

from typing import Any

import attrs

from ...protocol.messages import Message, TaskSpec
from ...protocol.serialize import Serialized
from ...records import Record, record

# ---------------------------------------------------------------- instructions


@record
class ToWorker(Record):
    """Send ``msg`` to the worker at ``address`` (on its stream)."""

    address: str
    msg: Message


@record
class ToClient(Record):
    """Send ``msg`` to the client ``client`` (on its stream)."""

    client: str
    msg: Message


@record
class DropWorker(Record):
    """The worker at ``address`` has been removed (``reason``): close its
    connection without reporting the removal back."""

    address: str
    reason: str


@record
class RestartNanny(Record):
    """Ask the nanny at ``nanny`` to restart its worker, then report the
    outcome with a :class:`NannyRestartedEvent` for ``request``."""

    request: str
    nanny: str


@record
class RetirementDone(Record):
    """Retirement ``request`` is over: ``retired`` were told to close;
    ``stuck`` (address -> keys) kept data only they held and stay."""

    request: str
    retired: list[str]
    stuck: dict[str, list[str]]


@record
class RestartDone(Record):
    """Restart ``request`` is over; ``error`` says why it failed ("" if not)."""

    request: str
    error: str


Instruction = ToWorker | ToClient | DropWorker | RestartNanny | RetirementDone | RestartDone

# ---------------------------------------------------------------- events


@record(kw_only=True)
class AddWorkerEvent(Record):
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
class RemoveWorkerEvent(Record):
    address: str
    reason: str = ""
    safe: bool = False  # a clean shutdown: running tasks are not suspicious


@record(kw_only=True)
class AddClientEvent(Record):
    client: str


@record(kw_only=True)
class RemoveClientEvent(Record):
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
class LongRunningEvent(Record):
    """A task left its worker's thread pool (``secede``): it runs on, but
    holds no thread."""

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


@record(kw_only=True)
class TickEvent(Record):
    """Time passed (the time is the ``now`` that ``handle`` takes).

    The server feeds one every second or so, and when a retirement or a
    restart reaches its deadline.  Workers silent for longer than the
    worker TTL are removed (and a :class:`DropWorker` returned for each);
    retirements and restarts past their deadline end.
    """


@record(kw_only=True)
class FireAndForgetEvent(Record):
    """Keep ``keys`` wanted until they are in memory, erred or cancelled."""

    keys: list[str]


@record(kw_only=True)
class RetireWorkersEvent(Record):
    """Retire ``workers`` (addresses or names): copy the data only they hold
    elsewhere, then close them; answer ``request`` with :class:`RetirementDone`."""

    request: str
    workers: list[str]
    timeout: float


@record(kw_only=True)
class RestartEvent(Record):
    """Forget every task, restart the nannied workers and close the others;
    answer ``request`` with :class:`RestartDone` once they are back."""

    request: str
    timeout: float


@record(kw_only=True)
class NannyRestartedEvent(Record):
    """A nanny answered (or failed: ``error``) a :class:`RestartNanny`."""

    request: str
    nanny: str
    error: str = ""


Event = (
    AddWorkerEvent
    | RemoveWorkerEvent
    | AddClientEvent
    | RemoveClientEvent
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
    | LongRunningEvent
    | HeartbeatEvent
    | StealResponseEvent
    | TickEvent
    | FireAndForgetEvent
    | RetireWorkersEvent
    | RestartEvent
    | NannyRestartedEvent
)
